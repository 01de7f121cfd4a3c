#!/usr/bin/env bash
# One device call (<= 560 s): fine-tune the LLaDA and the Dream proxy on kv-retrieval side by side on
# one GPU (two processes: a d384 model leaves most of an H200 idle) through the gated record curriculum
# of run.py (1-2 records first, small batches, many steps; the next range once validation there is
# >= 90%; the held-out 185-300 last, or after 80% of the training budget whatever the stage), then each
# exports its model and runs the long-task frontier (uncached, default, paper default, threshold rows
# first: run.settings()); both count their budgets from the same start. Packs into $OUT (<= 8 files,
# <= 16 MB each):
#   frontier_llada-kv.json, frontier_dream-kv.json, llada.log, dream.log, models.tar.part-aa.. (the
#   fine-tuned bf16 weights + tokenizers, split; keep them out of the repository: build/ is ignored).
#
#   run(command="bash eval/long_context/gpu.sh", timeout_s=598)   # the 2026-12-03 run: 570 s, both proxies learnt it
# Toy check on CPU (short contexts, 6 training steps through two curriculum stages, a few rows):
#   TOY=1 OUT=/tmp/toy bash eval/long_context/gpu.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TOKENIZERS_PARALLELISM=false
T_CALL=$(date +%s.%N)
bash eval/gpu/install_checkout.sh || exit 1  # a bare GPU machine: dllm_cache.hooks comes from an install
START=$(date +%s.%N)
echo "[gpu.sh] install took $(python3 -c "print(round($START - $T_CALL, 1))") s"
OUT=${OUT:-build/long_context/out}
WORK=build/long_context
mkdir -p "$WORK" "$OUT"
TRAIN_UNTIL=${TRAIN_UNTIL:-340}
SWEEP_UNTIL=${SWEEP_UNTIL:-552}
HARD=${HARD:-562}  # kill a process still running then: its JSON holds every finished row (install ~25 + 562 + packing < 598)
EXTRA=()
if [ -n "${TOY:-}" ]; then
  # --advance-at 0: every validation passes, so the toy walks the curriculum's stages (2-3, then 4-8)
  EXTRA=(--device cpu --toy --records 4 8 --stages 2-3 --advance-at 0 --max-steps 6 --batch-tokens 600 --val-n 4
         --stage-val-n 4 --val-every 0 --n 4 --eval-batch 4 --only "default,frontier Kp=10 Kr=2,block-dual,default thr=0.9")
  TRAIN_UNTIL=90 SWEEP_UNTIL=900 HARD=1200  # loading alone can take a minute on a busy CPU
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
# LLADA_FROM / DREAM_FROM: another starting point (e.g. a carried, already fine-tuned model folder)
for spec in "llada ${LLADA_FROM:-eval/tiny/model}" "dream ${DREAM_FROM:-eval/tiny/dream_model}"; do
  set -- $spec
  timeout -s INT "$HARD" python -m eval.long_context.run --model "$2" --name "$1-kv" --out "$WORK/$1" --start "$START" \
    --train-until "$TRAIN_UNTIL" --sweep-until "$SWEEP_UNTIL" "${EXTRA[@]}" > "$WORK/$1.log" 2>&1 &
done
wait
echo "[gpu.sh] both done after $(python3 -c "import time; print(round(time.time() - $START))") s"
for a in llada dream; do
  cp "$WORK/$a.log" "$OUT/$a.log"
  cp "$WORK/$a/frontier_$a-kv.json" "$OUT/" 2>/dev/null || echo "[gpu.sh] no results from $a"
  tail -n 5 "$WORK/$a.log"
done
# the weights come back only if they fit in 3 parts of 16 MB (bf16: ~46 MB); 8 files at most come back
( cd "$WORK" && tar cf models.tar llada/model dream/model 2>/dev/null )
if [ "$(stat -c %s "$WORK/models.tar" 2>/dev/null || echo 0)" -le 48000000 ]; then
  split -b 16000000 "$WORK/models.tar" "$OUT/models.tar.part-"
else
  echo "[gpu.sh] models.tar is $(stat -c %s "$WORK/models.tar") bytes: not packed"
fi
ls -la "$OUT"
