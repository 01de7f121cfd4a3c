"""Parallel decoding (threshold, factor), the early stop, and the samplers' host synchronisations."""

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from dllm_cache import CacheConfig, cache_enabled
from dllm_cache.models.tiny import tiny_dream, tiny_llada
from dllm_cache.sampling.generate import generate
from dllm_cache.sampling.unmasking import EarlyStop, factor_pick, threshold_pick

NEG = -math.inf


def _factor_reference(conf: list[float], f: float) -> int:
    """The paper's rule read literally: the largest n with (n + 1)(1 - c_n) < f, at least one."""
    ordered = sorted((c for c in conf if c > NEG), reverse=True)
    best = 0
    for n in range(1, len(ordered) + 1):
        if (n + 1) * (1 - ordered[n - 1]) < f:
            best = n
    return max(best, 1) if ordered else 0


def test_factor_rule_by_hand():
    conf = torch.tensor([[0.5, 0.99, 0.9, 0.95], [0.2, 0.1, NEG, NEG], [NEG, NEG, NEG, NEG]])
    # row 0 sorted 0.99, 0.95, 0.9, 0.5: (n+1)(1-c_n) = 0.02, 0.15, 0.4, 2.5
    assert factor_pick(conf, 1.0).tolist() == [[False, True, True, True], [True, False, False, False], [False] * 4]
    assert factor_pick(conf, 0.1)[0].tolist() == [False, True, False, False]
    assert factor_pick(conf, 3.0)[0].tolist() == [True] * 4
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        c = torch.rand(3, 9, generator=g) ** 0.2
        c[torch.rand(3, 9, generator=g) < 0.3] = NEG
        for f in (0.3, 1.0, 2.0):
            got = factor_pick(c, f).sum(dim=1).tolist()
            assert got == [_factor_reference(row, f) for row in c.tolist()]
            # the picked tokens are the most confident ones
            for row, picked in zip(c, factor_pick(c, f)):
                if picked.any():
                    assert row[picked].min() >= row[~picked].max()


def test_threshold_rule_takes_at_least_the_best():
    conf = torch.tensor([[0.95, 0.2, 0.91, NEG], [0.3, 0.5, NEG, NEG], [NEG] * 4])
    assert threshold_pick(conf, 0.9).tolist() == [[True, False, True, False], [False, True, False, False], [False] * 4]


def test_bad_parallel_arguments():
    model = tiny_llada()
    ids = torch.randint(0, 200, (1, 6))
    for kw in (dict(threshold=0.9, factor=1.0), dict(threshold=1.5), dict(factor=0), dict(threshold=True)):
        with pytest.raises(ValueError):
            generate(model, ids, gen_length=8, steps=8, block_length=4, **kw)
    with pytest.raises(ValueError, match="origin"):
        generate(tiny_dream(), ids, gen_length=8, steps=8, alg="origin", threshold=0.5)


E, M = 7, 9  # end token and mask id in the early-stop unit test


def test_early_stop_finishes_complete_rows_only():
    stop = EarlyStop([E], [0], torch.device("cpu"))
    resp = torch.tensor([
        [3, 4, E, M, M, M],  # complete: masks after the end token are filled
        [3, M, E, M, M, M],  # a mask before the end token: not yet
        [3, 4, E, 5, M, M],  # a real token after it: not an end
        [3, 4, 5, 6, M, M],  # no end token
        [3, E, 0, E, M, 0],  # padding and end tokens after it are fine
    ])  # fmt: skip
    done = stop.apply(resp, M)
    assert done.tolist() == [True, False, False, False, True]
    assert resp[0].tolist() == [3, 4, E, E, E, E] and resp[4].tolist() == [3, E, 0, E, E, 0]
    assert resp[1].tolist() == [3, M, E, M, M, M]


class _SyncCounter(TorchFunctionMode):
    """Counts the calls that make the host wait for the device (reading values back)."""

    READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "masked_select"}

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        index = args[1] if name in ("__getitem__", "__setitem__") and len(args) > 1 else None
        if name in self.READS or (isinstance(index, torch.Tensor) and index.dtype == torch.bool):
            self.n += 1
        return func(*args, **(kwargs or {}))


def _count(model, **kw):
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(1))
    with _SyncCounter() as counter:
        out = generate(model, ids, gen_length=16, steps=16, **kw)
    handle.remove()
    return out, len(calls), counter.n


PER_CALL = 1  # generate()'s input check reads its figures (token range, padding, mask token) in one host sync


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_host_syncs_at_most_one_per_step(factory, cached):
    model = factory()
    with cache_enabled(model, CacheConfig(cuda_graphs=False)) if cached else _nothing():
        _, steps, syncs = _count(model, block_length=8)
        # fixed: one per LLaDA block, plus the per-call input check (token ids within the vocabulary)
        assert steps == 16 and syncs == PER_CALL + (2 if factory is tiny_llada else 0)
        for kw in (dict(threshold=0.2), dict(factor=1.0), dict(stop_at_eos=True)):
            _, steps, syncs = _count(model, block_length=8, **kw)
            assert syncs <= PER_CALL + steps + 2, (kw, steps, syncs)  # one per step (+ one per LLaDA block when fixed)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_factor_extremes_and_threshold_use_fewer_steps(factory):
    model = factory()
    out_fixed, steps_fixed, _ = _count(model, block_length=8)
    out_all, steps_all, _ = _count(model, block_length=8, factor=1e9)  # every token accepted at once
    out_one, steps_one, _ = _count(model, block_length=8, factor=1e-9)  # one token per step
    mask_id = model.config.mask_token_id
    assert steps_fixed == 16 and steps_all == 2 and steps_one == 16
    assert not (out_all == mask_id).any() and not (out_one == mask_id).any()
    out_thr, steps_thr, _ = _count(model, block_length=8, threshold=0.05)
    assert steps_thr < 16 and not (out_thr == mask_id).any()


def _eos_after(model, column: int):
    """A forward hook making the end token certain from `column` on (an answer that ends there)."""
    eos = model.config.eos_token_id

    def hook(module, args, output):
        output.logits[:, column:, :] = -30.0
        output.logits[:, column:, eos] = 30.0
        return output

    return model.register_forward_hook(hook)


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
def test_stop_at_eos_ends_early_with_the_same_answer(factory):
    model = factory()
    P = 10
    handle = _eos_after(model, P + 5 - (factory is tiny_dream))  # Dream's row j predicts token j + 1
    try:
        ref, steps_ref, _ = _count(model, block_length=4)
        out, steps, _ = _count(model, block_length=4, stop_at_eos=True)
    finally:
        handle.remove()
    eos = model.config.eos_token_id
    assert (ref[:, P + 5 :] == eos).all()
    assert torch.equal(out, ref)
    assert steps_ref == 16 and steps == 8  # blocks 0 and 1 decoded, 2 and 3 filled
