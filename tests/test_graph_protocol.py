"""The CUDA-graph replay protocol, on CPU with a stand-in graph: one capture per step kind and
logits layout (a single graph serves every LLaDA block), the same tokens as eager steps, and the
persistent buffers a real graph reads never move while it exists."""

import pytest
import torch

import dllm_cache.engine.graphs as graphs
import dllm_cache.engine.patch as patch
import dllm_cache.engine.step as step
from dllm_cache import CacheConfig, cache_enabled
from dllm_cache.models.tiny import tiny_llada
from dllm_cache.sampling.generate import generate


def _pointers(branch) -> dict[str, int]:
    return {name: t.data_ptr() for name, t in branch.tensors().items()}


class _StandInGraph:
    """Like torch.cuda.CUDAGraph: capture records without running; replay runs the recorded step
    on the static inputs. Replay checks that the branch's buffers are where they were at capture."""

    def __init__(self, step: graphs.CapturedStep, forward, branch):
        self.step, self.forward, self.branch = step, forward, branch
        self.pointers = _pointers(branch)

    def replay(self) -> None:
        assert _pointers(self.branch) == self.pointers, "a buffer read by a captured step was reallocated"
        self.step.output = self.forward(self.step.input_ids, self.step.attention_mask)


@pytest.fixture
def stand_in_graphs(monkeypatch):
    """Graph replay on CPU; returns the list of (branch name, key-free) captures made."""
    captures = []

    def capture(forward, input_ids, attention_mask):
        state = patch._state(model_holder[0])
        step = graphs.CapturedStep(None, input_ids.clone(), None if attention_mask is None else attention_mask.clone(),
                                   None)
        step.graph = _StandInGraph(step, forward, state.branch())
        captures.append(state.active_branch)
        return step

    model_holder = []
    monkeypatch.setattr(graphs, "_capture", capture)
    monkeypatch.setattr(step, "graphable", lambda config, kind, ids, branch, disabled: (
        config.cuda_graphs and not disabled and kind in graphs.GRAPH_KINDS))
    return model_holder, captures


@pytest.mark.parametrize("kwargs", [dict(), dict(cfg_scale=1.0)], ids=["plain", "cfg"])
def test_one_graph_per_kind_serves_every_block(stand_in_graphs, kwargs):
    holder, captures = stand_in_graphs
    model = tiny_llada()
    holder.append(model)
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    run = dict(gen_length=32, steps=32, block_length=8, **kwargs)
    with cache_enabled(model, CacheConfig(response_interval=4, cuda_graphs=False)):
        eager = generate(model, ids, **run)
    with cache_enabled(model, CacheConfig(response_interval=4, cuda_graphs=True)):
        replayed = generate(model, ids, **run)
        graphs_held = {name: len(b.graphs) for name, b in patch._state(model).branches.items()}
    assert torch.equal(replayed, eager)
    n_branches = 2 if kwargs else 1
    assert len(captures) == 2 * n_branches  # "partial" and "response", once each, for all four blocks
    assert set(graphs_held.values()) == {2}


def test_stand_in_replay_does_run_the_step(stand_in_graphs):
    """The stand-in is not a no-op: a wrong captured step would change the tokens."""
    holder, _ = stand_in_graphs
    model = tiny_llada()
    holder.append(model)
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    run = dict(gen_length=16, steps=16, block_length=8)
    with cache_enabled(model, CacheConfig(response_interval=4, cuda_graphs=True)):
        good = generate(model, ids, **run)
    original = _StandInGraph.replay

    def skip_replay(self):  # a graph that forgets to recompute: steps return the capture-time output
        if self.step.output is None:
            original(self)

    _StandInGraph.replay = skip_replay
    try:
        with cache_enabled(model, CacheConfig(response_interval=4, cuda_graphs=True)):
            bad = generate(model, ids, **run)
    finally:
        _StandInGraph.replay = original
    assert not torch.equal(good, bad)
