"""The exact McNemar test and the "paired" objects (dllm_cache/analysis/paired.py) that frontier rows and
`dllm-cache eval --compare` carry."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from dllm_cache.analysis.paired import correct_indices, discordant, mcnemar_exact, paired_bounds, paired_object


def _two_sided_by_enumeration(b: int, c: int) -> Fraction:
    """Independent definition: the probability, under Binomial(b + c, 1/2), of every outcome at least
    as far from the centre as b (for a symmetric null this equals doubling the smaller tail)."""
    n = b + c
    if n == 0:
        return Fraction(1)
    far = abs(2 * b - n)
    return min(Fraction(1), sum(Fraction(math.comb(n, k), 2**n) for k in range(n + 1) if abs(2 * k - n) >= far))


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),  # no discordant problem: nothing to test
        (0, 5, 2 / 32),  # all five one way: 2 * (1/2)^5
        (1, 9, 22 / 1024),  # 2 * (C(10,0) + C(10,1)) / 2^10
        (3, 11, 0.057373046875),  # R: binom.test(3, 14)$p.value = 0.05737305 (= 940 / 16384)
        (5, 5, 1.0),  # balanced: the doubled tail exceeds 1 and is capped
        (7, 6, 1.0),
    ],
)
def test_known_values(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize(("b", "c"), [(0, 1), (2, 7), (12, 30), (40, 41), (0, 120), (150, 210)])
def test_matches_enumeration_and_is_symmetric(b, c):
    p = mcnemar_exact(b, c)
    assert p == pytest.approx(float(_two_sided_by_enumeration(b, c)), rel=1e-12)
    assert p == mcnemar_exact(c, b)


def test_large_counts_stay_finite_and_tiny():
    p = mcnemar_exact(0, 1100)  # 2^-1099: a float still holds it (no overflow, no underflow to a wrong 0 via 2**n floats)
    assert p == 2.0**-1099
    assert 0 < mcnemar_exact(400, 600) < 1e-9


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_rejects_non_counts(bad):
    with pytest.raises(ValueError, match="non-negative int"):
        mcnemar_exact(bad, 3)


def test_paired_object_from_correct_indices():
    uncached = correct_indices([True, True, False, False, True, False])  # [0, 1, 4]
    cached = correct_indices([True, False, True, True, True, False])  # [0, 2, 3, 4]
    assert discordant(cached, uncached) == (2, 1)
    obj = paired_object(cached, uncached, n=6)
    assert obj["cached_right_uncached_wrong"] == 2 and obj["cached_wrong_uncached_right"] == 1
    assert obj["p_value"] == mcnemar_exact(2, 1) == 1.0
    assert obj["exact"] is True and obj["n"] == 6 and obj["against"] == "uncached"
    with pytest.raises(ValueError, match="0..5"):
        paired_object([6], uncached, n=6)


def test_bounds_from_aggregates():
    # 500 problems, 10 fewer right when cached, 50 answers differ: b - c = -10 and b + c in {10, 12, ..., 50}
    out = paired_bounds(500, 358, 368, agreement=0.9)
    assert out["difference"] == -10 and out["answers_differ"] == 50 and out["exact"] is False
    assert out["p_value_min"] == mcnemar_exact(0, 10)
    assert out["p_value_max"] == mcnemar_exact(20, 30)
    assert out["at_0.05"] == "undetermined"
    # every answer change cancelled or none: equal counts are never significant
    assert paired_bounds(500, 368, 368, agreement=0.98)["at_0.05"] == "not significant"
    # few answers differ but all flipped the same way: significant whatever the per-problem data
    assert paired_bounds(500, 356, 368, agreement=1 - 12 / 500)["at_0.05"] == "significant"
    with pytest.raises(ValueError, match="inconsistent"):
        paired_bounds(500, 300, 368, agreement=0.99)
