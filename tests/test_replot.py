"""eval.replot redraws the untracked plots of eval/results from the committed result files."""

from __future__ import annotations

import gzip
import json
import struct

import pytest

from eval import replot

pytestmark = pytest.mark.lab  # imports the lab (eval/): `pytest -m lab` runs these, `-m "not lab"` the product's tests

# Every plot eval/results had when the PNGs left the tree (issue 24, item 5): each must still have
# its JSON and plot function, so the command named in eval/results/README.md can redraw it.
PLOTS_WHEN_UNTRACKED = {
    "dream7b-gsm8k-compile", "dream7b-gsm8k-memory", "dream7b-gsm8k-policy", "dream7b-hotpotqa",
    "dream7b-hotpotqa-memory", "dream7b-hotpotqa-policy", "frontier", "llada8b-gsm8k-compile", "llada8b-gsm8k-fp8",
    "llada8b-gsm8k-memory", "llada8b-gsm8k-policy", "llada8b-gsm8k-policy-whole", "llada8b-gsm8k-stacked",
    "llada8b-gsm8k-stacked-kr2", "llada8b-gsm8k-stacked-prefix", "llada8b-gsm8k-sweep", "llada8b-gsm8k512-stacked",
    "llada8b-hotpotqa", "llada8b-hotpotqa-memory", "llada8b-hotpotqa-policy", "llada8b-hotpotqa-stacked",
    "proxy_training/loss_curves", "real_rate", "real_rate_raw/ours_gen1024_b1", "real_rate_raw/ours_gen256_b1",
    "real_rate_raw/ours_gen256_b16", "real_rate_raw/ours_gen512_b1", "stacked", "tiny_quality", "tiny_threshold",
}


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_every_untracked_plot_has_its_source():
    assert PLOTS_WHEN_UNTRACKED <= set(replot.plots())


def test_redraws_a_bench_plot_and_a_study_plot(tmp_path):
    written = replot.main(["--out-dir", str(tmp_path), "tiny_threshold", "real_rate_raw/ours_gen256_b16"])
    assert written == [tmp_path / "tiny_threshold.png", tmp_path / "real_rate_raw" / "ours_gen256_b16.png"]
    assert all(w > 100 and h > 100 for w, h in map(_png_size, written))


def test_reads_gzipped_results_and_skips_files_without_a_plot(tmp_path):
    report = json.loads((replot.RESULTS / "real_rate.json").read_text())
    (tmp_path / "real_rate.json.gz").write_bytes(gzip.compress(json.dumps(report).encode()))
    (tmp_path / "notes.json").write_text(json.dumps({"rows": []}))  # no plot for it
    (tmp_path / "broken.json").write_text("{")  # not JSON: skipped, not an error
    found = replot.plots(tmp_path)
    assert list(found) == ["real_rate"] and found["real_rate"][0].name == "real_rate.json.gz"
    assert replot.main(["--results", str(tmp_path)]) == [tmp_path / "real_rate.png"]
    assert _png_size(tmp_path / "real_rate.png")[0] > 100
