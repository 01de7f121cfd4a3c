"""Paired statistics for a cached setting against uncached decoding on the same problems.

Independent 95% intervals cannot say whether a 2-point loss is real: two runs over the same 500
problems are strongly correlated (most problems are right, or wrong, under both). The paired test
looks only at the problems where the two runs disagree on correctness:

    b = cached right, uncached wrong      c = cached wrong, uncached right

Under the null hypothesis (the cache changes nothing systematically) each discordant problem is
equally likely to fall either way, so b ~ Binomial(b + c, 1/2). The exact McNemar test is the
two-sided exact binomial test of that: p = min(1, 2 * P(X <= min(b, c))), X ~ Binomial(b + c, 1/2),
and p = 1 when there is no discordant problem. It is computed with integer binomial coefficients
(no scipy, no normal approximation), so it is exact for any n.

`paired_object` is what a frontier row (the lab's eval/frontier) and `dllm-cache eval --compare` carry under
"paired"; rows measured before per-problem correctness was kept carry `paired_bounds` instead: from the row's
agreement with uncached (identical answers imply identical correctness) and the two correct counts, only a range of
discordant counts, and so a range of p-values, is known.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for discordant counts b and c (non-negative integers).

    p = min(1, 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c)); 1.0 when b + c == 0.
    Python's int / int division is correctly rounded, so the only error is the final float rounding.
    """
    for name, v in (("b", b), ("c", c)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"mcnemar_exact: {name} must be a non-negative int (a count of problems), got {v!r}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))  # P(X <= min(b, c)) * 2^n
    return min(1.0, 2 * tail / 2**n)


def correct_indices(flags: Iterable[bool]) -> list[int]:
    """[i for i, ok in enumerate(flags) if ok]: the compact per-problem record a row keeps."""
    return [i for i, ok in enumerate(flags) if ok]


def discordant(cached: Iterable[int], uncached: Iterable[int]) -> tuple[int, int]:
    """(b, c) from the correct-problem indices of two runs on the same problems:
    b = right only when cached, c = right only when uncached."""
    a, u = set(cached), set(uncached)
    return len(a - u), len(u - a)


def paired_object(cached: Sequence[int], uncached: Sequence[int], n: int, against: str = "uncached") -> dict:
    """The "paired" object of a frontier row or of a `dllm-cache eval --compare` score.

    cached, uncached: indices (0..n-1) of the problems each run got right, on the same n problems.
    Returns {"against": the baseline row's name, "n", "cached_right_uncached_wrong": b,
    "cached_wrong_uncached_right": c, "p_value": exact McNemar p, "exact": True}.
    """
    bad = [i for i in (*cached, *uncached) if not 0 <= i < n]
    if bad:
        raise ValueError(f"paired_object: correct indices must lie in 0..{n - 1} (the problems of both runs), got {bad[:5]}")
    b, c = discordant(cached, uncached)
    return {"against": against, "n": n, "cached_right_uncached_wrong": b, "cached_wrong_uncached_right": c,
            "p_value": mcnemar_exact(b, c), "exact": True}


def paired_bounds(n: int, correct_cached: int, correct_uncached: int, agreement: float, against: str = "uncached") -> dict:
    """What the aggregates of a row without per-problem data allow: the range of the exact McNemar p.

    The difference b - c = correct_cached - correct_uncached is known. Problems with identical answers
    have identical correctness, so b + c <= n * (1 - agreement) (D, the problems whose answers
    differ); b + c has the parity of b - c and is at least |b - c|. Every feasible (b, c) is scanned,
    so the range is exact for these aggregates: "p_value_min" when every answer change flipped
    correctness in the same direction, "p_value_max" when as many as possible cancelled out.
    A p_value_max below 0.05 means significant whatever the per-problem data; a p_value_min above
    0.05 means not significant whatever they are; otherwise the row cannot say.
    """
    if not 0.0 <= agreement <= 1.0:
        raise ValueError(f"paired_bounds: agreement must be a fraction in [0, 1], got {agreement!r}")
    delta = correct_cached - correct_uncached
    differ = round(n * (1.0 - agreement))
    if abs(delta) > differ:
        raise ValueError(f"paired_bounds: the correct counts differ by {abs(delta)} but only {differ} of {n} answers differ "
                         f"(agreement {agreement}); the aggregates are inconsistent")
    ps = []
    for total in range(abs(delta), differ + 1, 2):  # b + c, same parity as b - c
        b = (total + delta) // 2
        ps.append(mcnemar_exact(b, total - b))
    lo, hi = min(ps), max(ps)
    verdict = "significant" if hi < 0.05 else "not significant" if lo >= 0.05 else "undetermined"
    return {"against": against, "n": n, "exact": False, "difference": delta, "answers_differ": differ,
            "p_value_min": lo, "p_value_max": hi, "at_0.05": verdict,
            "note": "bounds from the row's agreement with uncached; the run kept no per-problem correctness"}
