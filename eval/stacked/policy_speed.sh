#!/usr/bin/env bash
# Issue 10's speed criterion on one GPU: CacheConfig()'s frontier selection against the paper's
# V-verify selection (same Kp 100 / Kr 8 / ratio 0.25, compiled, CUDA graphs) on the LLaDA-8B and
# Dream-7B shapes, GSM8K and HotpotQA workloads, in the same bench invocation as the uncached run.
#     bash eval/stacked/policy_speed.sh                 # results into $OUT (default eval/results)
#     SHAPES=llada-8b bash eval/stacked/policy_speed.sh # one shape (~4 min on an H100)
# Writes <shape>-<workload>-policy.{json,md,png}; the README's "Refresh policy" section quotes them.
set -u
OUT=${OUT:-eval/results}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
bash eval/gpu/install_checkout.sh || exit 1  # a bare GPU machine: dllm_cache.hooks comes from an install
SHAPES=${SHAPES:-llada-8b dream-7b}
for shape in $SHAPES; do
  tag=${shape/-/}  # llada8b, dream7b
  B="python -m dllm_cache.bench --shape $shape --no-progress --out-dir $OUT --compile on --policy paper frontier"
  timeout 200 $B --workload gsm8k --batch-size 1 8 --max-steps 33 --tag "${tag}-gsm8k-policy" 2>&1 | grep -v Warning | tail -8
  timeout 160 $B --workload hotpotqa --batch-size 1 4 --tag "${tag}-hotpotqa-policy" 2>&1 | grep -v Warning | tail -8
done
