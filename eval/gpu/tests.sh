#!/usr/bin/env bash
# The GPU test tier: every test marked `gpu` (tests/test_gpu.py: CUDA-graph replay, torch.compile on CUDA,
# the FlashAttention few-query path, the fp8 store's CUDA kernels, bf16 and float32 on the GPU), run on the
# GPU machine from a source checkout (editable install without dependencies: eval/gpu/install_checkout.sh), and recorded in eval/results/gpu_tests.txt:
# date, device, torch / CUDA versions, the exact command, pass / fail / skip counts and pytest's summary.
#
#     bash eval/gpu/tests.sh                 # PYTHON=python3 by default; GPU_TESTS_OUT=... to record elsewhere
#
# No other test in tests/ needs CUDA (the rest run on CPU in CI). The exit status is pytest's.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
PYTHON=$PY bash eval/gpu/install_checkout.sh || exit 1  # a bare GPU machine: dllm_cache.hooks comes from an install
RECORD=${GPU_TESTS_OUT:-eval/results/gpu_tests.txt}
JUNIT=$(mktemp --suffix .xml)
LOG=$(mktemp)
CMD="PYTHONPATH=. $PY -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -rA --durations=10"

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# --junitxml only feeds the counts below; it is not part of the recorded command's meaning
eval "$CMD --junitxml=$JUNIT" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}

mkdir -p "$(dirname "$RECORD")"
{
    echo "# GPU test tier (bash eval/gpu/tests.sh); written by the script, not by hand"
    echo "date: $started"
    echo "host: $(hostname)"
    PYTHONPATH=. $PY - <<'PY'
import torch
print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CUDA not available)'}")
print(f"torch: {torch.__version__}; CUDA (torch build): {torch.version.cuda}; cuDNN: {torch.backends.cudnn.version()}")
PY
    echo "driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || echo unknown)"
    echo "command: $CMD"
    echo "exit status: $rc"
    $PY - "$JUNIT" <<'PY'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (ET.ParseError, OSError) as err:
    print(f"counts: unavailable ({err})")
    sys.exit(0)
suite = root if root.tag == "testsuite" else root.find("testsuite")
total, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print(f"counts: passed {total - failed - errors - skipped}, failed {failed}, errors {errors}, skipped {skipped} "
      f"(of {total}); {float(suite.get('time', 0)):.1f} s")
PY
    echo
    echo "## pytest summary"
    # the slowest tests and the per-test outcomes (-rA) through the final line
    sed -n '/slowest .*durations/,$p' "$LOG"
} > "$RECORD"
rm -f "$JUNIT" "$LOG"
echo "recorded: $RECORD"
exit "$rc"
