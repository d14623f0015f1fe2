"""The statistics of result entries: per-scenario means with their 95% CI, and
significance tests for comparing entries episode by episode.

Every entry of a suite version is evaluated on the same fixed episodes (one pinned
manifest), so episode ``i`` of one entry pairs with episode ``i`` of another and
differences between entries can be tested on paired per-episode accuracies.

Only :mod:`math` is used: the harness does not depend on scipy. The Student t
distribution function comes from the regularized incomplete beta function,
evaluated by its continued fraction (modified Lentz; Numerical Recipes 6.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 10_000  # the fraction needs O(sqrt(max(a, b))) terms; df is at most a few thousand here


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the 95% CI half-width ``1.96 * sd / sqrt(n)`` (sample sd).

    The sums run in the order of ``values``, so the same per-episode accuracies in the
    same (episode) order give the same bits; NaN for an empty list, and a NaN half-width
    for a single value.

    :param values: per-episode accuracies.
    """
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n == 1:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, 1.96 * math.sqrt(var) / math.sqrt(n)


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (converges for x < (a+1)/(a+b+2))."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``.

    :param a: first shape parameter, > 0.
    :param b: second shape parameter, > 0.
    :param x: the point, in [0, 1].
    :param y: ``1 - x`` when the caller can compute it without cancellation.
    """
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y))
    # Use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) on the side where the fraction converges fast.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, y) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom.

    :param t: the statistic (``inf`` gives 0).
    :param df: degrees of freedom, > 0.
    """
    if math.isinf(t):
        return 0.0
    t2 = t * t
    # P(|T| >= |t|) = I_{df/(df+t^2)}(df/2, 1/2); 1 - x is passed exactly for large |t|.
    return min(1.0, max(0.0, betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))))


@dataclass(frozen=True)
class PairedTest:
    """The result of a paired two-sided t-test of ``a - b``.

    :param n: pairs.
    :param mean_diff: mean of ``a_i - b_i``.
    :param t: the t statistic (``±inf`` when every difference is the same non-zero value).
    :param df: degrees of freedom, ``n - 1``.
    :param p: two-sided p-value.
    """

    n: int
    mean_diff: float
    t: float
    df: int
    p: float

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p < alpha


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired two-sided t-test on per-episode results ``a`` and ``b`` (episode ``i`` pairs with ``i``).

    Per-episode accuracies are bounded and discrete, but a suite has hundreds of
    episodes, so the mean difference is close to normal and the t-test is the
    standard choice (as in Meta-Dataset's comparisons). Degenerate cases: fewer than
    two pairs or all differences zero give ``p = 1`` (no evidence of a difference);
    a constant non-zero difference gives ``p = 0``.

    :param a: per-episode accuracies of the first entry.
    :param b: per-episode accuracies of the second entry, same length and episode order.
    :raises ValueError: the sequences differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} != {len(b)}")
    n = len(a)
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = math.fsum(d) / n if n else 0.0
    if n < 2:
        return PairedTest(n, mean, 0.0, max(0, n - 1), 1.0)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return PairedTest(n, mean, t, n - 1, t_two_sided_p(t, n - 1))
