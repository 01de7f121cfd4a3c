#!/usr/bin/env bash
# The GPU stage of the memory work (issue 15), on one H100, from the repo root:
#     bash eval/memory/gpu.sh            # results into $OUT (default eval/results)
# 1. eval.gpu.check_cuda_graphs: graphs/compiled == eager and refresh-every-step == uncached on CUDA,
#    with the slimmer cache (response-row deltas only, logits_to_keep).
# 2. eval.memory: whole-process peaks, uncached vs cached in one process, LLaDA-8B and Dream-7B
#    shapes, the batches plus a 16k-token prompt at batch 1 -> memory.json.
# 3. The published LLaDA-8B speed rows again (compiled cache only; README table), to check
#    that the slimmer cache is at least as fast: llada8b-gsm8k-memory / llada8b-hotpotqa-memory,
#    and the Dream-7B rows: dream7b-gsm8k-memory / dream7b-hotpotqa-memory.
# 4. fp8 (opt-in, lossy K/V store, CacheConfig(kv_cache_dtype="fp8")): eval.kv_fp8
#    (logit deviation vs uncached / the exact cache, graphs == eager) -> kv_fp8_deviation.json, the
#    memory stage's runs with --kv-cache-dtype fp8 (rows beside the exact ones in memory.json), and
#    compiled LLaDA-8B speed rows with fp8 K/V: llada8b-gsm8k-fp8 (b1/8), llada8b-hotpotqa-fp8 (b1/4).
#    Alone: STAGES=fp8 bash eval/memory/gpu.sh (worst case ~10.5 min under the timeouts; on 2026-11-26 it
#    took ~5 min with the HotpotQA speed rows cut at their then 100 s budget, now 200 s).
# Each stage is bounded by `timeout` so a slow one cannot starve the rest. STAGES picks stages
# (default "check memory speed"; the three together need ~14 min, over one device call's 10).
set -u
OUT=${OUT:-eval/results}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
bash eval/gpu/install_checkout.sh || exit 1  # a bare GPU machine: dllm_cache.hooks comes from an install
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/memory_device.txt"
STAGES=${STAGES:-check memory speed}
if [[ " $STAGES " == *" check "* ]]; then
  timeout 150 python -m eval.gpu.check_cuda_graphs >"$OUT/check_cuda_graphs.txt" 2>&1
  echo "check_cuda_graphs rc=$?" | tee -a "$OUT/check_cuda_graphs.txt"
fi
if [[ " $STAGES " == *" memory "* ]]; then
  for shape in llada-8b dream-7b; do
    timeout 150 python -m eval.memory --shape "$shape" --runs hotpotqa:1,4,8,16 gsm8k:1,8,16 16000/32:1 --max-length 16384 \
      --out "$OUT/memory.json" 2>&1 | grep -v Warning | tail -14
  done
fi
if [[ " $STAGES " == *" speed "* ]]; then
  B="python -m dllm_cache.bench --shape llada-8b --no-progress --out-dir $OUT --compile on --policy paper"
  D="python -m dllm_cache.bench --shape dream-7b --no-progress --out-dir $OUT --compile on --policy paper"
  timeout 150 $B --workload gsm8k --batch-size 1 8 16 --max-steps 33 --tag llada8b-gsm8k-memory 2>&1 | tail -8
  timeout 150 $B --workload hotpotqa --batch-size 1 4 --tag llada8b-hotpotqa-memory 2>&1 | tail -8
  timeout 120 $D --workload gsm8k --batch-size 1 8 --max-steps 33 --tag dream7b-gsm8k-memory 2>&1 | tail -8
  timeout 120 $D --workload hotpotqa --batch-size 1 4 --tag dream7b-hotpotqa-memory 2>&1 | tail -8
fi
if [[ " $STAGES " == *" fp8 "* ]]; then
  timeout 60 python -m eval.kv_fp8 --out "$OUT/kv_fp8_deviation.json" >"$OUT/kv_fp8_deviation.txt" 2>&1
  echo "kv_fp8_deviation rc=$?" | tee -a "$OUT/kv_fp8_deviation.txt"
  grep -v Warning "$OUT/kv_fp8_deviation.txt" | tail -8
  for shape in llada-8b dream-7b; do
    timeout 130 python -m eval.memory --shape "$shape" --kv-cache-dtype fp8 --runs hotpotqa:1,4,8,16 gsm8k:1,8,16 \
      16000/32:1 --max-length 16384 --out "$OUT/memory.json" 2>&1 | grep -v Warning | tail -14
  done
  B="python -m dllm_cache.bench --shape llada-8b --no-progress --out-dir $OUT --compile on --kv-cache-dtype fp8 --policy paper"
  timeout 120 $B --workload gsm8k --batch-size 1 8 --max-steps 33 --tag llada8b-gsm8k-fp8 2>&1 | tail -8
  timeout 200 $B --workload hotpotqa --batch-size 1 4 --tag llada8b-hotpotqa-fp8 2>&1 | tail -8
fi
[ -f "$OUT/check_cuda_graphs.txt" ] && tail -3 "$OUT/check_cuda_graphs.txt"
