"""Scaling the proxies (issue 9): growing a trained model, and data-parallel training (CPU, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.tiny import train
from eval.tiny.grow import grow_model_dir
from eval.tiny.tokenizer import load_or_build

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return load_or_build(None)


def _export_tiny(tok, arch: str, path: Path) -> None:
    torch.manual_seed(0)
    model = train.model_class(arch)(train.model_config(tok, arch, tiny=True))
    with torch.no_grad():  # non-zero everywhere, so a dropped or misplaced weight shows in the logits
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    train.export_model(model, tok, path)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_grown_model_computes_the_same_logits(tok, tmp_path, arch):
    from transformers import AutoModel

    import dllm_cache  # noqa: F401

    _export_tiny(tok, arch, tmp_path / "small")
    summary = grow_model_dir(tmp_path / "small", tmp_path / "big", depth=2, ffn=3)
    small = AutoModel.from_pretrained(tmp_path / "small").float().eval()
    big = AutoModel.from_pretrained(tmp_path / "big").float().eval()
    assert big.config.num_hidden_layers == 2 * small.config.num_hidden_layers
    ffn_key = "mlp_hidden_size" if arch == "llada" else "intermediate_size"
    assert getattr(big.config, ffn_key) == 3 * getattr(small.config, ffn_key)

    def in_blocks(model) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if ".blocks." in n or ".layers." in n)

    assert in_blocks(big) > 2 * 2 * in_blocks(small)  # twice the layers, each with a 3x FFN
    assert summary["params"] == sum(p.numel() for p in big.parameters())
    assert summary["grown_from"]["depth"] == 2 and summary["grown_from"]["ffn"] == 3
    ids = torch.randint(3, len(tok), (2, 40))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding, as at generation time
    with torch.no_grad():
        a = small(ids, attention_mask=mask).logits
        b = big(ids, attention_mask=mask).logits
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # The copies are real layers: their output projections start at zero but their inputs do not.
    names = dict(big.named_parameters())
    out_key = next(k for k in names if k.endswith(("1.attn_out.weight", "1.self_attn.o_proj.weight")))
    q_key = out_key.replace("attn_out", "q_proj").replace("o_proj", "q_proj")
    assert names[out_key].abs().max() == 0 and names[q_key].abs().max() > 0


def test_grow_refuses_bad_factors(tok, tmp_path):
    _export_tiny(tok, "llada", tmp_path / "small")
    with pytest.raises(ValueError, match="growth factors"):
        grow_model_dir(tmp_path / "small", tmp_path / "big", depth=0, ffn=2)


def test_each_rank_makes_its_own_batches(tok):
    kwargs = dict(seed=1, seq_len=256, batch_size=2, hotpot_frac=0.5, max_rows=8)
    maker = train.BatchMaker(tok, **kwargs)
    for rank in range(2):
        stream = iter(train.BatchStream(None, 5, rank=rank, world=2, **kwargs))
        for step in (5, 6, 7):
            got, want = next(stream), maker.make(step * 2 + rank)
            assert got.step == want.step == step * 2 + rank
            assert torch.equal(got.input_ids, want.input_ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_parallel_training_counts_every_rank_and_resumes(tok, tmp_path):
    """torchrun, 2 CPU ranks (gloo): the checkpoint's token count is the sum over both ranks'
    batches, a resumed run continues the step count, and rank 0 exports a loadable model."""
    common = [
        "--out", str(tmp_path / "run"), "--tiny-config", "--device", "cpu", "--batch-size", "2", "--seq-len", "256",
        "--workers", "0", "--log-every", "1", "--no-final-eval", "--warmup", "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def run(extra: list[str]) -> dict:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
               "-m", "eval.tiny.train", *common, *extra]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "2 ranks" in done.stdout
        return json.loads((tmp_path / "run" / "checkpoint" / "train_state.json").read_text())

    kwargs = dict(seed=train.tasks.TRAIN_SEED, seq_len=256, batch_size=2, hotpot_frac=0.5, max_rows=512)
    maker = train.BatchMaker(tok, **kwargs)

    def tokens(steps: range) -> int:
        return sum(maker.make(s * 2 + r).input_ids.numel() for s in steps for r in range(2))

    first = run(["--steps", "3", "--export-dir", str(tmp_path / "export")])
    assert first["step"] == 3 and first["tokens"] == tokens(range(3))
    second = run(["--steps", "5", "--resume"])
    assert second["step"] == 5 and second["tokens"] == tokens(range(5))

    from transformers import AutoModel

    import dllm_cache  # noqa: F401

    model = AutoModel.from_pretrained(str(tmp_path / "export"))
    assert json.loads((tmp_path / "export" / "training_summary.json").read_text())["ranks"] == 2
    assert type(model).__name__ == "LLaDAModelLM"


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from eval.tiny.distributed import Ranks

    ranks = Ranks.from_env("cpu")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    wrapped = ranks.wrap(model)
    x = torch.full((3, 4), float(rank + 1))  # a different batch on each rank
    wrapped(x).sum().backward()
    flags = ranks.agree(rank == 0, rank == 1)  # rank 0's flags win
    total = ranks.total(rank + 10)
    torch.save({"grad": model.weight.grad.clone(), "flags": flags, "total": total}, f"{out}/rank{rank}.pt")
    ranks.barrier()  # both ranks are done with every collective and have written their results
    # Skip interpreter teardown: freeing the DDP reducer then destroys the gloo process group, which
    # joins gloo's worker thread while holding the GIL; that thread may need the GIL to free a
    # finished all-reduce's tensors, and the worker hung so once in four CPU runs (py-spy stack).
    os._exit(0)


def test_ranks_average_gradients_and_share_rank0_decisions(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # d/dw sum(w x + b) = column sums of x: 3 * (r + 1) per rank; DDP averages them: 4.5
    for g in got:
        torch.testing.assert_close(g["grad"], torch.full((1, 4), 4.5))
        assert g["flags"] == (True, False)
        assert g["total"] == 21
