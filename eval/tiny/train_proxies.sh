#!/usr/bin/env bash
# Train (or keep training) both proxy models side by side on one GPU, for MINUTES of wall clock.
#
#   bash eval/tiny/train_proxies.sh MINUTES TOTAL_MINUTES [INIT_DIR]
#   (env: EVAL_EVERY=minutes between quick held-out evals, default 0 = only the final one;
#    HOTPOT_FRAC=share of multi-hop batches, default 0.5; ARCHS="llada dream" which models;
#    TRAIN_ARGS="--lr 5e-4 --warmup 300" extra eval.tiny.train arguments;
#    COMPILE=1 to torch.compile the training step: 2.2-2.4x the tokens/s on an H100 after ~55 s
#    of compiling, eval/results/proxy_training/train_profile_h100.txt)
#
# Each model resumes from its checkpoint under /tmp/proxy_<arch> when the machine still holds one
# (a back-to-back call), else starts from INIT_DIR/<arch> (an exported bf16 model: weights only,
# fresh optimizer) when given, else from scratch. TOTAL_MINUTES is the length of the cosine LR
# schedule over all calls. The exported models, training logs and summaries go into one tar
# archive split in 15 MB pieces under $OUT (the device tool returns at most 8 files of <= 16 MiB):
#
#   cat proxies.tar.part-* | tar x      # -> llada/ dream/ train_llada.log train_dream.log
#
# Measured (train_profile_h100.txt): one eager model alone trains at 0.56-0.86 M tokens/s and two
# side by side at ~0.35 M each, so pairing saves nothing; compiled, one model reaches 0.9-2.2 M.
set -u
MINUTES=${1:?minutes}
TOTAL=${2:?total minutes}
INIT_DIR=${3:-}
OUT=${OUT:-/tmp/proxy_out}
export PYTHONUNBUFFERED=1 PYTHONPATH=. TOKENIZERS_PARALLELISM=false
bash eval/gpu/install_checkout.sh || exit 1  # a bare GPU machine: dllm_cache.hooks comes from an install
STAGE=/tmp/proxy_stage
mkdir -p "$STAGE" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for arch in ${ARCHS:-llada dream}; do
  run=/tmp/proxy_$arch
  if [ -f "$run/checkpoint/train_state.json" ]; then
    start=(--resume)
  elif [ -n "$INIT_DIR" ] && [ -f "$INIT_DIR/$arch/config.json" ]; then
    start=(--init-from "$INIT_DIR/$arch")
  else
    start=(--arch "$arch")
  fi
  echo "[proxies] $arch: ${start[*]}"
  python -m eval.tiny.train --out "$run" "${start[@]}" --max-minutes "$MINUTES" --total-minutes "$TOTAL" \
    ${COMPILE:+--compile} --device cuda --workers 6 --eval-n 64 --eval-every-minutes "${EVAL_EVERY:-0}" --hotpot-frac "${HOTPOT_FRAC:-0.5}" \
    --export-dir "$STAGE/$arch" ${TRAIN_ARGS:-} >>"$STAGE/train_$arch.log" 2>&1 &
done
wait
for arch in ${ARCHS:-llada dream}; do
  echo "===== $arch"
  grep -E "^\[eval\]|stopped|model .* params" "$STAGE/train_$arch.log" | tail -12
  grep -E "^\[train\] step" "$STAGE/train_$arch.log" | tail -3
  grep -iE "error|traceback" "$STAGE/train_$arch.log" | tail -5
done
tar cf - -C "$STAGE" . | split -b 15000000 - "$OUT/proxies.tar.part-"
ls -la "$OUT"
