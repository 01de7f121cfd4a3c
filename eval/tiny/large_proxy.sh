#!/usr/bin/env bash
# A larger proxy (issue 9's attempt at scale): a shipped proxy grown 2x deeper with a 2x FFN
# (LLaDA 13.4 M -> 39.3 M parameters, Dream 9.4 M -> 26.7 M; same function at the start:
# eval/tiny/grow.py), then trained data-parallel on every GPU of the device machine
# (eval/tiny/distributed.py). Neither is shipped (79 / 53 MB in bf16; the tracked tree a device call
# carries is already 62 of its 64 MiB); this script rebuilds one in two device calls (measured on
# 4 H100s, ~2 M tokens/s: LLaDA 1.27 B tokens, Dream 1.53 B, eval/results/proxy_training/):
#
#   bash eval/tiny/large_proxy.sh train 9.0 17     # call 1: grow + train 9.0 min (LR schedule over 17)
#   bash eval/tiny/large_proxy.sh train 9.0 17     # call 2, same machine: resumes, then exports
#   bash eval/tiny/large_proxy.sh frontier         # every frontier setting at n=500, all GPUs in parallel
#
# On one GPU (issue 28, item 4: a larger proxy rebuilt where only one H200 is lent; ~1/6 of the tokens):
#
#   NAME=llada-large-h200 bash eval/tiny/large_proxy.sh train 8.0 8.0   # call 1: grow, train, export
#   NAME=llada-large-h200 PARTS="aa ab ac" bash eval/tiny/large_proxy.sh paired   # call 2, same machine
#   NAME=llada-large-h200 PARTS="ad ae" bash eval/tiny/large_proxy.sh parts       # the rest of the weights
#
# `paired`: the arith rows that carry the cache's loss (uncached, default, paper default, official, frontier,
# Kr 2 / 4) and the threshold rows, each with per-problem correctness (exact McNemar), then eval.divergence
# at one token per step and at threshold 0.9 (which steps, positions and refreshes the answers change at).
# `parts`: the exported model as a tar split in 16 MB parts; PARTS names those to return (<= 8 files per call).
#
# (env: GPUS, default every visible GPU; HOTPOT_FRAC share of multi-hop batches, default 0.6;
#  TRAIN_ARGS extra eval.tiny.train arguments; DEPTH / FFN growth factors, default 2 / 2;
#  ARCH=dream grows eval/tiny/dream_model instead of eval/tiny/model.)
# Results go to $OUT (default /tmp/large_out): training log and summary, the exported model is
# kept on the machine (/tmp/large_stage/<arch>_large) for the frontier stage; frontier_<arch>-large.json
# holds every row (copy it to eval/results, then `python -m eval.frontier report`).
set -u
STAGE_NAME=${1:?stage: train, frontier, paired or parts}
OUT=${OUT:-/tmp/large_out}
ARCH=${ARCH:-llada}
case $ARCH in llada) SRC=eval/tiny/model ;; dream) SRC=eval/tiny/dream_model ;; *) echo "ARCH is llada or dream"; exit 2 ;; esac
NAME=${NAME:-$ARCH-large}
RUN=/tmp/proxy_${ARCH}_large
STAGE=/tmp/large_stage
MODEL=$STAGE/${ARCH}_large
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
export PYTHONUNBUFFERED=1 PYTHONPATH=. TOKENIZERS_PARALLELISM=false
bash eval/gpu/install_checkout.sh || exit 1  # a bare GPU machine: dllm_cache.hooks comes from an install
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast on shared hosts
mkdir -p "$STAGE" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1

if [ "$STAGE_NAME" = train ]; then
  MINUTES=${2:?minutes}
  TOTAL=${3:?total minutes of the LR schedule}
  if [ -f "$RUN/checkpoint/train_state.json" ]; then
    start=(--resume)
  else
    python -m eval.tiny.grow "$SRC" "$STAGE/grown_$ARCH" --depth "${DEPTH:-2}" --ffn "${FFN:-2}" || exit 1
    start=(--init-from "$STAGE/grown_$ARCH")
  fi
  echo "[large] $GPUS GPUs: ${start[*]}"
  python -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m eval.tiny.train --out "$RUN" "${start[@]}" \
    --max-minutes "$MINUTES" --total-minutes "$TOTAL" --compile --device cuda --workers 6 --eval-n 64 \
    --eval-every-minutes 0 --hotpot-frac "${HOTPOT_FRAC:-0.6}" --lr 5e-4 --warmup 200 --min-lr-frac 0.05 \
    --reserve-seconds 75 --export-dir "$MODEL" ${TRAIN_ARGS:-} >>"$STAGE/train_${ARCH}_large.log" 2>&1
  echo "[large] train rc=$?"
  grep -E "^\[eval\]|stopped|model .* params|done in" "$STAGE/train_${ARCH}_large.log" | tail -8
  grep -E "^\[train\] step" "$STAGE/train_${ARCH}_large.log" | tail -3
  grep -iE "error|traceback" "$STAGE/train_${ARCH}_large.log" | tail -5
  cp "$STAGE/train_${ARCH}_large.log" "$OUT/"
  [ -f "$MODEL/training_summary.json" ] && cp "$MODEL/training_summary.json" "$OUT/training_summary_${ARCH}_large.json"
elif [ "$STAGE_NAME" = frontier ]; then
  [ -f "$MODEL/config.json" ] || { echo "no trained model at $MODEL: run the train stage first"; exit 1; }
  # GPU 0 .. GPUS-2 share the arith settings, the last GPU runs multihop (~40% of arith's time).
  k=$((GPUS > 1 ? GPUS - 1 : 1))
  for i in $(seq 1 "$k"); do
    CUDA_VISIBLE_DEVICES=$((i - 1)) python -m eval.frontier run --model "$MODEL" --name "$NAME" --families arith \
      --part "$i/$k" --out-dir "$STAGE/frontier_${ARCH}_arith$i" --no-progress >"$STAGE/frontier_${ARCH}_arith$i.log" 2>&1 &
  done
  if [ "$GPUS" -gt 1 ]; then
    CUDA_VISIBLE_DEVICES=$((GPUS - 1)) python -m eval.frontier run --model "$MODEL" --name "$NAME" --families hotpot \
      --out-dir "$STAGE/frontier_${ARCH}_hotpot" --no-progress >"$STAGE/frontier_${ARCH}_hotpot.log" 2>&1 &
  fi
  wait
  [ "$GPUS" -gt 1 ] || python -m eval.frontier run --model "$MODEL" --name "$NAME" --families hotpot \
      --out-dir "$STAGE/frontier_${ARCH}_hotpot" --no-progress >"$STAGE/frontier_${ARCH}_hotpot.log" 2>&1
  tail -n 4 "$STAGE"/frontier_${ARCH}_*.log
  python -m eval.frontier merge --into "$OUT/frontier_$NAME.json" "$STAGE"/frontier_${ARCH}_*/frontier_$NAME.json
elif [ "$STAGE_NAME" = paired ]; then
  [ -f "$MODEL/config.json" ] || { echo "no trained model at $MODEL: run the train stage first"; exit 1; }
  STEP="uncached,default,paper-default,official,frontier,Kr=2,Kr=4"
  THR="uncached thr=0.9,default thr=0.9,paper-default thr=0.9,default Kr=2 thr=0.9,default tokens-clock thr=0.9,block-dual thr=0.9"
  python -m eval.frontier run --model "$MODEL" --name "$NAME" --families arith --threshold --only "$STEP,$THR" \
    --out-dir "$STAGE/paired_$NAME" --no-progress >"$STAGE/paired_$NAME.log" 2>&1
  echo "[large] paired rows rc=$?"; tail -n 3 "$STAGE/paired_$NAME.log"
  cp "$STAGE/paired_$NAME/frontier_$NAME.json" "$STAGE/paired_$NAME.log" "$OUT/"
  for thr in 0 0.9; do
    python -m eval.divergence --model "$MODEL" --device cuda --n 500 --threshold $thr \
      --out "$STAGE/divergence/divergence_${NAME}_thr$thr" >"$STAGE/divergence_$thr.log" 2>&1
    echo "[large] divergence threshold $thr rc=$?"; grep -E "^- correct|^- sequences|^- first" "$STAGE/divergence_$thr.log"
    tar -czf "$OUT/divergence_$NAME.tgz" -C "$STAGE" divergence 2>/dev/null
  done
elif [ "$STAGE_NAME" != parts ]; then
  echo "unknown stage $STAGE_NAME (train, frontier, paired or parts)"; exit 2
fi
if [ -n "${PARTS:-}" ] && [ -f "$MODEL/config.json" ]; then  # the exported weights, in parts of 16 MB
  [ -f "$STAGE/parts/model.tar.part-aa" ] || { mkdir -p "$STAGE/parts" && tar -C "$STAGE" -cf - "${ARCH}_large" |
    split -b 16000000 - "$STAGE/parts/model.tar.part-"; }
  ls "$STAGE/parts"
  for p in $PARTS; do cp "$STAGE/parts/model.tar.part-$p" "$OUT/"; done
fi
ls -la "$OUT"
