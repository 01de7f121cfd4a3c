#!/usr/bin/env bash
# The serving load bench on one GPU (issue 26): what the first H200 call (eval/results/serving_raw/h200_run1.json)
# did not reach, merged into eval/results/serving.json. The GPU machine has no fastapi/uvicorn: carry their wheels.
#
#   here, once:  pip download -d .whl fastapi uvicorn ... (the versions of this checkout's venv; .whl/ is ignored)
#   run(command="bash eval/serving/gpu.sh", carry=[".whl"], timeout_s=420)    # nvidia-h200
#
# Each invocation writes serving.json as rows finish; $OUT gets the results after each.
set -uo pipefail
cd "$(dirname "$0")/../.."
bash eval/gpu/install_checkout.sh || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
R=eval/results
ARGS="--shape llada-8b --device cuda --dtype bfloat16 --gen-length 256 --block-length 32 --tokens-per-step 3"
save() { [ -n "${OUT:-}" ] && cp $R/serving.json $R/serving.md "$OUT/" 2>/dev/null; true; }
if [ "${STAGE:-rest}" = gsm8k ]; then
  timeout ${GSM8K_LIMIT:-230} python -m eval.serving $ARGS --prompt-chars 700 --concurrency 1 16 --requests-per-client 1 \
    --caches none default --direct --chunk-times --out $R/serving_gsm8k.json || echo "[serving gpu.sh] exit $? (gsm8k)"
  [ -n "${OUT:-}" ] && cp $R/serving_gsm8k.* "$OUT/"
  exit 0
fi
# the cache at 1 (beside the direct call), 16 and 64 clients, its direct latency and its batched-vs-alone agreement
timeout ${CACHED_LIMIT:-260} python -m eval.serving $ARGS --concurrency 1 16 64 --caches default --direct --agreement 16 \
  --merge $R/serving.json || echo "[serving gpu.sh] exit $? (cached)"
save
# uncached at 1 client again, beside its direct generate() latency
timeout ${UNCACHED_LIMIT:-90} python -m eval.serving $ARGS --concurrency 1 --caches none --direct --merge $R/serving.json \
  || echo "[serving gpu.sh] exit $? (uncached direct)"
save
ls -la "${OUT:-.}"
# STAGE=gsm8k: GSM8K-shaped prompts (700 tokens, as the real-rate and bench rows of the 8B shape), uncached and cached
# at 1 and 16 clients, one request per client, with every chunk's arrival time (--chunk-times):
#   run(command="STAGE=gsm8k bash eval/serving/gpu.sh", carry=[".whl"], timeout_s=300)
