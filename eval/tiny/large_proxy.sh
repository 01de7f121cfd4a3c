#!/usr/bin/env bash
# The larger LLaDA proxy (issue 9's attempt at scale): the shipped 13.4 M-parameter proxy grown
# 2x deeper with a 2x FFN (39.3 M parameters, same function at the start: eval/tiny/grow.py),
# then trained data-parallel on every GPU of the device machine (eval/tiny/distributed.py).
# It is too large to ship (79 MB in bf16); this script rebuilds it in two device calls:
#
#   bash eval/tiny/large_proxy.sh train 9.2 17     # call 1: grow + train 9.2 min (LR schedule over 17)
#   bash eval/tiny/large_proxy.sh train 9.2 17     # call 2, same machine: resumes, then exports
#   bash eval/tiny/large_proxy.sh frontier         # every frontier setting at n=500, all GPUs in parallel
#
# (env: GPUS, default every visible GPU; HOTPOT_FRAC share of multi-hop batches, default 0.6;
#  TRAIN_ARGS extra eval.tiny.train arguments; DEPTH / FFN growth factors, default 2 / 2.)
# Results go to $OUT (default /tmp/large_out): training log and summary, the exported model is
# kept on the machine (/tmp/large_stage/llada_large) for the frontier stage; frontier_llada-large.json
# holds every row (merge it with `python -m eval.frontier merge`, then `report`).
set -u
STAGE_NAME=${1:?stage: train or frontier}
OUT=${OUT:-/tmp/large_out}
RUN=/tmp/proxy_llada_large
STAGE=/tmp/large_stage
MODEL=$STAGE/llada_large
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
export PYTHONUNBUFFERED=1 PYTHONPATH=. TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast on shared hosts
mkdir -p "$STAGE" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1

if [ "$STAGE_NAME" = train ]; then
  MINUTES=${2:?minutes}
  TOTAL=${3:?total minutes of the LR schedule}
  if [ -f "$RUN/checkpoint/train_state.json" ]; then
    start=(--resume)
  else
    python -m eval.tiny.grow eval/tiny/model "$STAGE/grown" --depth "${DEPTH:-2}" --ffn "${FFN:-2}" || exit 1
    start=(--init-from "$STAGE/grown")
  fi
  echo "[large] $GPUS GPUs: ${start[*]}"
  python -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m eval.tiny.train --out "$RUN" "${start[@]}" \
    --max-minutes "$MINUTES" --total-minutes "$TOTAL" --compile --device cuda --workers 6 --eval-n 64 \
    --eval-every-minutes 0 --hotpot-frac "${HOTPOT_FRAC:-0.6}" --lr 5e-4 --warmup 200 --min-lr-frac 0.05 \
    --reserve-seconds 75 --export-dir "$MODEL" ${TRAIN_ARGS:-} >>"$STAGE/train_llada_large.log" 2>&1
  echo "[large] train rc=$?"
  grep -E "^\[eval\]|stopped|model .* params|done in" "$STAGE/train_llada_large.log" | tail -8
  grep -E "^\[train\] step" "$STAGE/train_llada_large.log" | tail -3
  grep -iE "error|traceback" "$STAGE/train_llada_large.log" | tail -5
  cp "$STAGE/train_llada_large.log" "$OUT/"
  [ -f "$MODEL/training_summary.json" ] && cp "$MODEL/training_summary.json" "$OUT/training_summary_llada_large.json"
elif [ "$STAGE_NAME" = frontier ]; then
  [ -f "$MODEL/config.json" ] || { echo "no trained model at $MODEL: run the train stage first"; exit 1; }
  # GPU 0 .. GPUS-2 share the arith settings, the last GPU runs multihop (~40% of arith's time).
  k=$((GPUS > 1 ? GPUS - 1 : 1))
  for i in $(seq 1 "$k"); do
    CUDA_VISIBLE_DEVICES=$((i - 1)) python -m eval.frontier run --model "$MODEL" --name llada-large --families arith \
      --part "$i/$k" --out-dir "$STAGE/frontier_arith$i" --no-progress >"$STAGE/frontier_arith$i.log" 2>&1 &
  done
  if [ "$GPUS" -gt 1 ]; then
    CUDA_VISIBLE_DEVICES=$((GPUS - 1)) python -m eval.frontier run --model "$MODEL" --name llada-large --families hotpot \
      --out-dir "$STAGE/frontier_hotpot" --no-progress >"$STAGE/frontier_hotpot.log" 2>&1 &
  fi
  wait
  [ "$GPUS" -gt 1 ] || python -m eval.frontier run --model "$MODEL" --name llada-large --families hotpot \
      --out-dir "$STAGE/frontier_hotpot" --no-progress >"$STAGE/frontier_hotpot.log" 2>&1
  tail -n 4 "$STAGE"/frontier_*.log
  python -m eval.frontier merge --into "$OUT/frontier_llada-large.json" "$STAGE"/frontier_*/frontier_llada-large.json
else
  echo "unknown stage $STAGE_NAME (train or frontier)"; exit 2
fi
ls -la "$OUT"
