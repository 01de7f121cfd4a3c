#!/usr/bin/env bash
# Speed at the rate real models decode (issue 25), on one GPU (H200). Each stage fits in a
# 10-minute call; every stage tars what it wrote under eval/results into $OUT (device machine).
#
#   PYTHONPATH=. python -m eval.real_rate.traces   # CPU, seconds: eval/results/traces_real-*.json (committed)
#   bash eval/real_rate/gpu.sh gen256    # ours b1 (graphs + compiled), peers b1, ours b16          (<10 min)
#   bash eval/real_rate/gpu.sh long      # profile; paper + block-prefix b1 gen 512 / 1024; Fast-dLLM b1 512 / 1024 (~10 min)
#   bash eval/real_rate/gpu.sh report    # real_rate_raw/* -> eval/results/real_rate.json / .md / .png
#   bash eval/real_rate/gpu.sh block_start  # block-dual vs block_start="incremental": gen 256 b1 / b16, gen 1024 b1 (<10 min)
#
# The peers' code comes from clones in peers/ (ignored by git, see eval/peers/run.py). Their model code
# calls torch.compile (Fast-dLLM's attention, the original's flex attention with max-autotune): on a
# fresh machine the peers steps ran past 110-140 s twice; give them a call of their own. torch.compile's
# cache lives in build/inductor (ignored) so a second call on a warm machine compiles less.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=.
bash eval/gpu/install_checkout.sh || exit 1  # a bare GPU machine: dllm_cache.hooks comes from an install
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/build/inductor}
R=eval/results
RAW=$R/real_rate_raw
stage=${1:-gen256}
PEERS="--dllm-cache-repo peers/dLLM-cache --fast-dllm-repo peers/Fast-dLLM"

save() {  # everything this work wrote so far, as one archive in $OUT (the call's file count stays low)
  python -m eval.real_rate report > /dev/null 2>&1 || true
  if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/real_rate_results.tgz" $R/real_rate.* $RAW $R/real_rate_more $R/profile_real_rate_* $R/block_start_raw \
      2>/dev/null || true
  fi
}
# and once more at the end: a stage's add-rows / cp after its last step must come back too (on 2026-12-03 the b16
# rows and the original's gen-1024 file did not: each stage had saved only inside its steps)
trap save EXIT
step() {  # step SECONDS CMD...: one measurement, bounded, logged; a failure does not stop the stage
  local limit=$1; shift
  echo "[real_rate.sh] $(date +%T) $*" >&2
  timeout "$limit" "$@" || echo "[real_rate.sh] exit $? from: $*" >&2
  save
}

if [[ $stage == gen256 ]]; then
  step 200 python -m eval.real_rate ours --gen 256 --batch 1 --compile both --repeats 2
  step 140 python -m eval.real_rate peers --gen 256 --batch 1 $PEERS --repeats 2
  step 220 python -m eval.real_rate ours --gen 256 --batch 16 --compile on --repeats 1
fi

# Run on 2026-12-03 as three calls (the engine files restored from HEAD first: a GPU call carries the working
# tree, helpers' edits included): the paper and block-prefix rows at gen 512 / 1024 join the final stage's files
# through add-rows; Fast-dLLM alone (the original dLLM-Cache at one token per step takes most of a call's time).
if [[ $stage == long ]]; then
  step 80 python -m eval.gpu.profile_step --workload gsm8k --batch-size 1 --variants compiled+graph \
      --out $R/profile_real_rate_llada8b_b1.txt
  for g in 512 1024; do
    step 110 python -m eval.real_rate ours --gen $g --batch 1 --policy paper block-prefix --response-interval 8 \
        --compile on --repeats 1 --warmup-steps 40 --out-dir $R/real_rate_more
    python -m eval.real_rate add-rows $R/real_rate_more/ours_gen${g}_b1.json --policy paper --suffix paper
    python -m eval.real_rate add-rows $R/real_rate_more/ours_gen${g}_b1.json --policy block-prefix --suffix prefix
  done
  step 150 python -m eval.real_rate peers --gen 512 --batch 1 $PEERS --repeats 1 --skip dllm-cache-original
  step 175 python -m eval.real_rate peers --gen 1024 --batch 1 $PEERS --repeats 1 --skip dllm-cache-original
fi

# Run on 2026-12-03 (session 10): the original dLLM-Cache code at gen 512 / 1024 (one token per step: 512 / 1024 steps
# of its step, twice with the warm-up; the gen-1024 file was lost, see the trap above), and the paper and
# block-prefix policies at batch 16 (rows transcribed from the printed report: real_rate_raw/logged_gen256_b16.json).
if [[ $stage == rest ]]; then
  for g in 512 1024; do  # peers_gen<G>_b1_original.json sits beside the Fast-dLLM file (the report reads both)
    step $((g == 512 ? 200 : 330)) python -m eval.real_rate peers --gen $g --batch 1 $PEERS --repeats 1 --skip fast-dllm \
        --out-dir $R/real_rate_more
    cp $R/real_rate_more/peers_gen${g}_b1.json $RAW/peers_gen${g}_b1_original.json 2>/dev/null
  done
fi
if [[ $stage == b16 ]]; then
  step 400 python -m eval.real_rate ours --gen 256 --batch 16 --policy paper block-prefix --response-interval 8 \
      --compile on --repeats 1 --warmup-steps 20 --out-dir $R/real_rate_more
  python -m eval.real_rate add-rows $R/real_rate_more/ours_gen256_b16.json --policy paper --suffix paper
  python -m eval.real_rate add-rows $R/real_rate_more/ours_gen256_b16.json --policy block-prefix --suffix prefix
fi

# What one call could still afford after gen256's first run (its peers and batch-16 steps ran past
# their limits): Fast-dLLM alone at gen 256, then the two fastest policies at batch 16 and at
# gen 512 / 1024, with a 20-40-step warm-up (every cached step kind at least twice) instead of a whole generation.
if [[ $stage == final ]]; then
  F="--policy frontier block-dual --response-interval 8 --compile on --repeats 1"
  step 110 python -m eval.real_rate peers --gen 256 --batch 1 $PEERS --repeats 1 --skip dllm-cache-original
  step 190 python -m eval.real_rate ours --gen 256 --batch 16 $F --warmup-steps 20
  step 80 python -m eval.real_rate ours --gen 512 --batch 1 $F --warmup-steps 40
  step 100 python -m eval.real_rate ours --gen 1024 --batch 1 $F --warmup-steps 40
fi

# CacheConfig(block_start="incremental") (docs/policies.md, issue 25): block-dual's block step without its full
# forward per block, beside Fast-dLLM's block-dual, at the real rate; `dllm-cache bench` reports in
# eval/results/block_start_raw/ (not merged into real_rate.json: read them beside its block-dual rows).
if [[ $stage == block_start ]]; then
  BS="python -m dllm_cache.bench --shape llada-8b --workload gsm8k --init by-name --policy block-dual block-dual-incremental
      --compile on --repeats 1 --no-progress --out-dir $R/block_start_raw"
  step 150 $BS --trace $R/traces_real-llada_gen256.json --batch-size 1 --warmup-steps 20 --tag gen256_b1
  step 200 $BS --trace $R/traces_real-llada_gen256.json --batch-size 16 --warmup-steps 20 --tag gen256_b16
  step 200 $BS --trace $R/traces_real-llada_gen1024.json --batch-size 1 --warmup-steps 40 --tag gen1024_b1
fi

if [[ $stage == report ]]; then
  python -m eval.real_rate report
fi
