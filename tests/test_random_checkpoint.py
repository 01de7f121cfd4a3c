"""eval/random_checkpoint.py (the lab's random-weight checkpoints in a real shape, for timing
`dllm-cache eval --compare`): what it writes loads in the lm-eval model and generates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("tokenizers")

from dllm_cache.integrations.lm_eval.model import DLLMCacheLM  # noqa: E402
from eval.random_checkpoint import save  # noqa: E402

pytestmark = pytest.mark.lab


def _req(text: str, task: str) -> SimpleNamespace:
    return SimpleNamespace(args=(text, {"until": []}), task_name=task)


@pytest.mark.parametrize("shape", ["tiny-llada", "tiny-dream"])
def test_random_checkpoint_runs(shape, tmp_path):
    """eval/random_checkpoint.py writes a loadable checkpoint (the GPU timing command uses llada-8b)."""
    path = save(tmp_path / shape, shape, torch.float32, device="cpu")
    lm = DLLMCacheLM(pretrained=str(path), device="cpu", gen_length=4, steps=4, cache="on")
    assert lm.family == shape.split("-")[1] and lm.mask_id == 256
    (text,) = lm.generate_until([_req("any text, even ünïcode", "t")], disable_tqdm=True)
    assert isinstance(text, str) and lm.get_model_info()["dllm_cache_speed"]["t"]["forwards"] == 4
