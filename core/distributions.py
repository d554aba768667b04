"""Distributions the experiment reports need: the normal, Student t and chi-square distributions, and the
regularized incomplete gamma and beta functions behind the last two.

The standard library only (no SciPy): the normal quantile is `statistics.NormalDist`'s; the normal CDF
is computed with `math.erfc`, so it keeps its relative precision in the lower tail (see `normal_cdf`).
The incomplete gamma and beta functions are evaluated by series and by continued fractions (Numerical
Recipes 6.2 and 6.4) to a relative tolerance of 1e-15; tests/test_report_stats.py checks them against
tabulated values and closed forms.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Final

__all__ = [
    "STANDARD_NORMAL",
    "chi2_sf",
    "normal_cdf",
    "regularized_beta",
    "regularized_gamma_q",
    "student_t_cdf",
    "student_t_ppf",
]

STANDARD_NORMAL: Final = NormalDist()
"""N(0, 1): `STANDARD_NORMAL.inv_cdf(p)` is the normal quantile (0 < p < 1, else a ValueError)."""

_EPS: Final = 1e-15
_TINY: Final = 1e-300
_MAX_ITER: Final = 100_000


def normal_cdf(x: float) -> float:
    """P(Z <= x) for Z standard normal. Not `STANDARD_NORMAL.cdf`, which computes 1 + erf(x / sqrt(2))
    and so keeps only an absolute precision of about 1e-16 in the lower tail (0 from about x = -8.5)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _log_gamma_prefix(a: float, x: float) -> float:
    return -x + a * math.log(x) - math.lgamma(a)


def _gamma_p_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    n = a
    for _ in range(_MAX_ITER):
        n += 1.0
        term *= x / n
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(_log_gamma_prefix(a, x))


def _gamma_q_fraction(a: float, x: float) -> float:
    # Modified Lentz evaluation of the continued fraction for Q(a, x) (Numerical Recipes 6.2).
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.exp(_log_gamma_prefix(a, x)) * h


def regularized_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a), the regularized upper incomplete gamma function (a > 0, x >= 0)."""
    if a <= 0.0:
        raise ValueError(f"a must be > 0, got {a}")
    if x < 0.0:
        raise ValueError(f"x must be >= 0, got {x}")
    if x == 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _gamma_p_series(a, x))
    return min(1.0, _gamma_q_fraction(a, x))


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-square distributed with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    if x <= 0.0:
        return 1.0
    return regularized_gamma_q(dof / 2.0, x / 2.0)


def _beta_fraction(a: float, b: float, x: float) -> float:
    # Modified Lentz evaluation of the continued fraction for I_x(a, b) (Numerical Recipes 6.4).
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < _TINY:
        d = _TINY
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (a, b > 0, 0 <= x <= 1)."""
    if a <= 0.0 or b <= 0.0:
        raise ValueError("a and b must be > 0")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(p: float, df: float) -> float:
    """The Student t quantile, by bisection on `student_t_cdf` (the normal quantile beyond df = 1e7)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df > 1e7:
        return STANDARD_NORMAL.inv_cdf(p)
    if p < 0.5:
        return -student_t_ppf(1.0 - p, df)
    lo, hi = 0.0, max(1.0, STANDARD_NORMAL.inv_cdf(p))
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)
