"""Data-parallel lm-eval (`accelerate launch`, one replica per process) gives the single-process results.

Runs on CPU: two processes launched by `accelerate launch --multi_gpu` (torchrun underneath) talk over
gloo, lm-eval shards the documents by rank and gathers the metrics on rank 0. At batch_size=1 every
document's output must be identical to the single-process run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")
pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eval.multi_gpu import run as multi_gpu_eval  # noqa: E402
from tests.test_lm_eval import _save_tiny  # noqa: E402

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests

LIMIT = 4  # documents: 2 per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    model_dir = _save_tiny(root / "llada", "llada")
    model_args = f"pretrained={model_dir},device=cpu,gen_length=4,steps=4,cache=on,batch_size=1"
    # arith_synth is 0-shot: lm-eval draws random few-shot examples from one generator per process, so a
    # sharded few-shot task (gsm8k_local, 5-shot) gives documents other examples than a single process.
    common = ["run", "--model_args", model_args, "--tasks", "arith_synth", "--limit", str(LIMIT)]
    single, dp = root / "single.json", root / "dp.json"
    assert multi_gpu_eval.main([*common, "--out", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", "eval.multi_gpu", *common, "--out", str(dp),
    ]
    proc = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return single, dp, root


def test_two_processes_shard_and_match_single_process(runs):
    single, dp, root = runs
    a, b = json.loads(single.read_text()), json.loads(dp.read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert [r["rank"] for r in b["ranks"]] == [0, 1]
    per_rank = [r["last_generate_call"]["requests"] for r in b["ranks"]]
    assert per_rank == [LIMIT // 2, LIMIT // 2]  # each rank generated its own shard only
    assert len({r["doc_id"] for r in b["samples"]["arith_synth"]}) == LIMIT
    assert multi_gpu_eval.main(["compare", str(single), str(dp), "--out", str(root / "cmp.json")]) == 0
    report = json.loads((root / "cmp.json").read_text())
    assert report["identical"] and report["throughput_ratio_b_over_a"] > 0


def test_compare_reports_a_different_output(runs, tmp_path, capsys):
    single, dp, _ = runs
    changed = json.loads(dp.read_text())
    changed["samples"]["arith_synth"][1]["response"] = ["something else"]
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(changed))
    assert multi_gpu_eval.main(["compare", str(single), str(path)]) == 1
    doc = changed["samples"]["arith_synth"][1]["doc_id"]
    assert f"1 documents with different outputs: [{doc}]" in capsys.readouterr().out
