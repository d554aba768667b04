# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The contextual bandit's per-request choice, `nogil` over typed memoryviews.

`linear_choose` is `edgewise.core.linear_bandits.choose_reference` (the NumPy reference the tests
compare it with) in C: per arm k the score s_k = theta_k . x + ucb * sqrt(x' A_k^-1 x), the choice
probabilities p_k = floor / K + (1 - floor) * softmax(s / temperature)_k, and the arm the uniform draw
`u` in [0, 1) selects by inverse CDF over p. It writes p into `probs` and returns the arm's index; the
propensity of the choice is probs[index], exactly.
"""

from libc.math cimport exp, sqrt


def linear_choose(
    const double[:, ::1] theta,
    const double[:, :, ::1] a_inv,
    const double[::1] x,
    double ucb,
    double temperature,
    double floor,
    double u,
    double[::1] probs,
) -> int:
    cdef Py_ssize_t k_arms = theta.shape[0]
    cdef Py_ssize_t dim = theta.shape[1]
    if k_arms < 1 or x.shape[0] != dim or probs.shape[0] != k_arms:
        raise ValueError("linear_choose: theta (K, d), x (d,) and probs (K,) disagree")
    if a_inv.shape[0] != k_arms or a_inv.shape[1] != dim or a_inv.shape[2] != dim:
        raise ValueError("linear_choose: a_inv must be (K, d, d)")
    if not temperature > 0.0:
        raise ValueError("linear_choose: temperature must be > 0")
    cdef Py_ssize_t k, i, j, chosen
    cdef double mean, quad, row, top, total, cumulative, share
    with nogil:
        top = -1e308
        for k in range(k_arms):
            mean = 0.0
            quad = 0.0
            for i in range(dim):
                if x[i] == 0.0:
                    continue
                mean = mean + theta[k, i] * x[i]
                row = 0.0
                for j in range(dim):
                    row = row + a_inv[k, i, j] * x[j]
                quad = quad + x[i] * row
            if quad < 0.0:
                quad = 0.0
            probs[k] = (mean + ucb * sqrt(quad)) / temperature
            if probs[k] > top:
                top = probs[k]
        total = 0.0
        for k in range(k_arms):
            probs[k] = exp(probs[k] - top)
            total = total + probs[k]
        share = floor / k_arms
        for k in range(k_arms):
            probs[k] = share + (1.0 - floor) * probs[k] / total
        chosen = k_arms - 1
        cumulative = 0.0
        for k in range(k_arms):
            cumulative = cumulative + probs[k]
            if u < cumulative:
                chosen = k
                break
    return chosen
