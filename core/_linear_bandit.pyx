# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, auto_pickle=False
"""The contextual bandit's per-request choice, `nogil` over typed memoryviews.

`LinearChooser` holds one policy's per-arm theta (K, d) and A^-1 (K, d, d) as typed memoryviews,
acquired once when the policy is built. `choose` is `edgewise.core.linear_bandits.choose_reference`
(the NumPy reference the tests compare it with) in C: per arm k the score
s_k = theta_k . x + ucb * sqrt(x' A_k^-1 x), the choice probabilities
p_k = floor / K + (1 - floor) * softmax(s / temperature)_k, and the arm the uniform draw `u` in [0, 1)
selects by inverse CDF over p. It returns the arm's index and p of that arm: the exact propensity.

x is passed as a list of floats (what the pipeline builds and logs): converting 32 floats costs less
than acquiring a buffer. Rows of A^-1 are read only for the non-zero entries of x (one-hot features make
most of them zero).
"""

from libc.math cimport exp, sqrt

cdef enum:
    MAX_ARMS = 64
    MAX_DIM = 64


cdef class LinearChooser:
    cdef const double[:, ::1] theta
    cdef const double[:, :, ::1] a_inv
    cdef readonly double ucb
    cdef readonly double temperature
    cdef readonly double floor
    cdef readonly Py_ssize_t arms
    cdef readonly Py_ssize_t dim

    def __init__(
        self,
        const double[:, ::1] theta,
        const double[:, :, ::1] a_inv,
        double ucb,
        double temperature,
        double floor,
    ) -> None:
        if theta.shape[0] < 1 or theta.shape[0] > MAX_ARMS or theta.shape[1] < 1 or theta.shape[1] > MAX_DIM:
            raise ValueError("LinearChooser: theta must be (K, d) with 1 <= K, d <= 64")
        if a_inv.shape[0] != theta.shape[0] or a_inv.shape[1] != theta.shape[1] or a_inv.shape[2] != theta.shape[1]:
            raise ValueError("LinearChooser: a_inv must be (K, d, d)")
        if not temperature > 0.0:
            raise ValueError("LinearChooser: temperature must be > 0")
        if not (0.0 <= floor < 1.0):
            raise ValueError("LinearChooser: floor must be in [0, 1)")
        self.theta = theta
        self.a_inv = a_inv
        self.ucb = ucb
        self.temperature = temperature
        self.floor = floor
        self.arms = theta.shape[0]
        self.dim = theta.shape[1]

    cdef void _probabilities(self, const double* x, double* probs) noexcept nogil:
        cdef Py_ssize_t k, i, j, nnz = 0
        cdef Py_ssize_t nonzero[MAX_DIM]
        cdef double mean, quad, row, top = -1e308, total = 0.0
        for i in range(self.dim):
            if x[i] != 0.0:
                nonzero[nnz] = i
                nnz += 1
        for k in range(self.arms):
            mean = 0.0
            quad = 0.0
            for i in range(nnz):
                mean = mean + self.theta[k, nonzero[i]] * x[nonzero[i]]
                row = 0.0
                for j in range(nnz):
                    row = row + self.a_inv[k, nonzero[i], nonzero[j]] * x[nonzero[j]]
                quad = quad + x[nonzero[i]] * row
            if quad < 0.0:
                quad = 0.0
            probs[k] = (mean + self.ucb * sqrt(quad)) / self.temperature
            if probs[k] > top:
                top = probs[k]
        for k in range(self.arms):
            probs[k] = exp(probs[k] - top)
            total = total + probs[k]
        for k in range(self.arms):
            probs[k] = self.floor / self.arms + (1.0 - self.floor) * probs[k] / total

    cdef int _load(self, list x, double* out) except -1:
        if len(x) != self.dim:
            raise ValueError(f"LinearChooser: x has {len(x)} entries, the model {self.dim}")
        cdef Py_ssize_t i
        for i in range(self.dim):
            out[i] = x[i]
        return 0

    def choose(self, list x, double u) -> tuple:
        """(index, propensity) of the arm the uniform draw u in [0, 1) selects for feature vector x."""
        cdef double xs[MAX_DIM]
        cdef double probs[MAX_ARMS]
        cdef double cumulative = 0.0
        cdef Py_ssize_t k, chosen
        self._load(x, xs)
        with nogil:
            self._probabilities(xs, probs)
            chosen = self.arms - 1
            for k in range(self.arms):
                cumulative = cumulative + probs[k]
                if u < cumulative:
                    chosen = k
                    break
        return chosen, probs[chosen]

    def probabilities_into(self, list x, double[::1] out) -> None:
        """P(arm k | x) for every arm, into out (length K)."""
        if out.shape[0] != self.arms:
            raise ValueError("LinearChooser: out must have one entry per arm")
        cdef double xs[MAX_DIM]
        cdef double probs[MAX_ARMS]
        cdef Py_ssize_t k
        self._load(x, xs)
        with nogil:
            self._probabilities(xs, probs)
            for k in range(self.arms):
                out[k] = probs[k]
