#!/usr/bin/env bash
# Data-parallel lm-eval on two GPUs vs one, same documents: outputs must match, throughput is reported.
# Run from the repository root on a machine with 2 GPUs (H100), with `pip install -e ".[eval]"`:
#     bash eval/multi_gpu/gpu.sh
# Writes eval/results/multi_gpu_1gpu.json, multi_gpu_2gpu.json and multi_gpu_compare.json (exit 1 if any
# document's output differs). batch_size=1 so every document is computed alone in both runs (LLaDA numbers
# positions from 0 whatever the left padding: a different batch mix would change padded rows).
# On the offline GPU machine, lm-eval travels as wheels: `bash eval/gpu/device_wheels.sh` here, then carry
# .whl; this script installs them into /tmp/site when lm-eval is missing.
set -euo pipefail
bash eval/gpu/install_checkout.sh  # a bare GPU machine: dllm_cache.hooks comes from an install
if ! python -c "import lm_eval" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:.${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "lm-eval is not installed: pip install -e '.[eval]' (offline GPU machine: bash eval/gpu/device_wheels.sh here, carry .whl)" >&2
    exit 2
  fi
fi
MODEL=${MODEL:-eval/tiny/model}
# 0-shot by default: lm-eval draws random few-shot examples from one generator per process, so a
# sharded few-shot task (gsm8k_local is 5-shot) gives its documents other examples than one process.
TASKS=${TASKS:-arith_synth}
LIMIT=${LIMIT:-200}
ARGS=${ARGS:-pretrained=$MODEL,dtype=bfloat16,gen_length=256,steps=64,block_length=8,cache=on,batch_size=1}
OUT=${OUT:-eval/results}

CUDA_VISIBLE_DEVICES=0 python -m eval.multi_gpu run --model_args "$ARGS,device=cuda" \
    --tasks "$TASKS" --limit "$LIMIT" --out "$OUT/multi_gpu_1gpu.json"
accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
    -m eval.multi_gpu run --model_args "$ARGS" \
    --tasks "$TASKS" --limit "$LIMIT" --out "$OUT/multi_gpu_2gpu.json"
python -m eval.multi_gpu compare "$OUT/multi_gpu_1gpu.json" "$OUT/multi_gpu_2gpu.json" \
    --out "$OUT/multi_gpu_compare.json"
