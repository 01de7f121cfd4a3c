"""Decoding traces: recorded per row and block, written as JSON, replayed step for step."""

import pytest
import torch

from dllm_cache.models.tiny import tiny_dream, tiny_llada
from dllm_cache.sampling.generate import generate
from dllm_cache.sampling.trace import DecodeTrace, ReplaySchedule, batch_rows, read_trace, steps_per_block, write_trace
from tests.test_decoding import _eos_after


def _ids(batch=3, seed=2):
    return torch.randint(0, 200, (batch, 10), generator=torch.Generator().manual_seed(seed))


def _forwards(model, **kw):
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        out = generate(model, _ids(), gen_length=16, steps=16, **kw)
    finally:
        handle.remove()
    return out, len(calls)


@pytest.mark.parametrize("factory", [tiny_llada, tiny_dream], ids=["llada", "dream"])
@pytest.mark.parametrize("rule", [dict(threshold=0.05), dict(factor=3.5)], ids=["threshold", "factor"])
def test_replay_reproduces_the_recorded_generation(factory, rule):
    model = factory()
    trace = DecodeTrace()
    out, steps = _forwards(model, block_length=8, trace=trace, **rule)
    rows = trace.rows()
    assert len(rows) == 3 and all(len(r["blocks"]) == 2 and not r["stopped"] for r in rows)
    assert all(sum(b) == 8 and min(b) >= 1 for r in rows for b in r["blocks"])
    # a batch steps until its slowest row has filled the block
    assert steps == sum(steps_per_block(rows, 2)) and steps < 16
    replayed, replay_steps = _forwards(model, block_length=8, schedule=ReplaySchedule(rows, 16, 8))
    assert replay_steps == steps
    assert torch.equal(replayed, out)  # the most confident tokens, as many as recorded


def test_trace_of_an_early_stop_replays_with_the_stop(tmp_path):
    model = tiny_llada()
    handle = _eos_after(model, 10 + 5)
    try:
        trace = DecodeTrace()
        out, steps = _forwards(model, block_length=4, threshold=0.05, stop_at_eos=True, trace=trace)
    finally:
        handle.remove()
    rows = trace.rows()
    assert all(r["stopped"] and len(r["blocks"]) == 2 for r in rows)
    path = write_trace(tmp_path / "t.json", rows, {"gen_length": 16, "block_length": 4})
    data = read_trace(path)
    assert data["rows"] == rows and data["summary"]["stopped_fraction"] == 1.0
    # replayed on another model (random weights stand-in): same steps, then the rows are filled
    other = tiny_llada(seed=3)
    replayed, replay_steps = _forwards(other, block_length=4, schedule=ReplaySchedule(data["rows"], 16, 4))
    assert replay_steps == steps
    assert (replayed[:, 10 + 8 :] == model.config.eos_token_id).all()
    assert not (replayed == model.config.mask_token_id).any()


def test_traces_accumulate_over_calls_and_batches_cycle():
    model = tiny_llada()
    trace = DecodeTrace()
    for seed in (1, 2):
        generate(model, _ids(2, seed), gen_length=16, steps=16, block_length=8, threshold=0.05, trace=trace)
    rows = trace.rows()
    assert len(rows) == 4
    assert batch_rows(rows, 6) == rows + rows[:2]


def test_replay_schedule_rejects_mismatched_traces():
    good = {"blocks": [[4, 4], [8]], "stopped": False}
    ReplaySchedule([good], 16, 8)
    with pytest.raises(ValueError, match="blocks, expected 4"):
        ReplaySchedule([good], 16, 4)
    with pytest.raises(ValueError, match="expected 8 in every block"):
        ReplaySchedule([{"blocks": [[4, 3], [8]], "stopped": False}], 16, 8)
    ReplaySchedule([{"blocks": [[4, 3]], "stopped": True}], 16, 8)  # stopped early: fewer is fine
    with pytest.raises(ValueError, match="token counts"):
        ReplaySchedule([{"blocks": [[4, -4], [8]]}], 16, 8)
    model = tiny_llada()
    with pytest.raises(ValueError, match="recorded with gen_length 16 and block_length 8"):
        generate(model, _ids(1), gen_length=16, steps=16, block_length=4, schedule=ReplaySchedule([good], 16, 8))
    with pytest.raises(ValueError, match="2 trace rows but the batch has 1"):
        generate(model, _ids(1), gen_length=16, steps=16, block_length=8, schedule=ReplaySchedule([good] * 2, 16, 8))
    with pytest.raises(ValueError, match="cannot be combined"):
        generate(model, _ids(1), gen_length=16, steps=16, block_length=8, threshold=0.5,
                 schedule=ReplaySchedule([good], 16, 8))


def test_gzipped_trace_files_read_back_the_same(tmp_path):
    rows = [{"blocks": [[3, 1], [4]], "stopped": False, "text": "x" * 50}] * 40
    meta = {"gen_length": 8, "block_length": 4}
    plain = read_trace(write_trace(tmp_path / "t.json", rows, meta))
    packed = write_trace(tmp_path / "t.json.gz", rows, meta)
    assert packed.stat().st_size < (tmp_path / "t.json").stat().st_size / 5
    assert read_trace(packed) == plain
    (tmp_path / "bad.json.gz").write_bytes(__import__("gzip").compress(b'{"rows": []}'))
    with pytest.raises(ValueError, match="not a decoding trace"):
        read_trace(tmp_path / "bad.json.gz")
