#!/usr/bin/env bash
# Stacked speed on one GPU (issue 11): decoding traces on the proxy model, the LLaDA-8B-shaped
# bench replaying them, and the side-by-side with the peers' code. Stages run in order; each is
# a few minutes on an H100 (see README "Parallel decoding and the block KV cache").
#
#   bash eval/stacked/run.sh traces        # proxy traces -> eval/results/traces_llada_*.json.gz      (~3 min)
#   bash eval/stacked/run.sh bench         # dllm-cache bench, GSM8K and HotpotQA shapes, traces    (~6 min)
#   bash eval/stacked/run.sh peers         # eval.peers, batch 1, both workloads -> stacked.json    (~6 min)
#   bash eval/stacked/run.sh traces512     # gen-512 traces from the gen-256 ones (CPU, seconds)
#   bash eval/stacked/run.sh bench512      # the 8B bench replaying them, batch 1 and 16           (~3 min)
#   bash eval/stacked/run.sh peers512      # eval.peers at gen 512, batch 1                        (~4 min)
# ("all" runs the first three.)
#
# The peers stage needs clones of the peers' code in peers/ (ignored by git, see eval/peers/run.py).
# When $OUT is set (device machine), every file written to eval/results is copied there too.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=.
bash eval/gpu/install_checkout.sh || exit 1  # a bare GPU machine: dllm_cache.hooks comes from an install
R=eval/results
MODEL=${MODEL:-eval/tiny/model}
stage=${1:-all}

copy_out() { if [ -n "${OUT:-}" ]; then cp "$@" "$OUT"/ 2>/dev/null || true; fi; }
P="python -m eval.peers run --dllm-cache-repo peers/dLLM-cache --fast-dllm-repo peers/Fast-dLLM --batch 1"

if [[ $stage == traces || $stage == all ]]; then
  # GSM8K-shaped: gen 256 in blocks of 32 (Fast-dLLM's GSM8K setting, the bench's gsm8k workload)
  python -m eval.traces --model "$MODEL" --name llada --task arith --gen 256,256,32 --no-progress \
      --rule fixed threshold:0.9 factor:1.0 --cache none paper default block-dual block-prefix
  python -m eval.traces --model "$MODEL" --name llada --task arith --gen 256,256,32 --no-progress \
      --rule threshold:0.9 --cache kr2     # the frontier cache refreshing the response every 2 steps
  python -m eval.traces --model "$MODEL" --name llada --task arith --gen 256,256,32 --no-progress \
      --rule threshold:0.9 --cache block-dual --stop-at-eos
  # HotpotQA-shaped: gen 32, one block of 32
  python -m eval.traces --model "$MODEL" --name llada --task multihop --no-progress \
      --rule fixed threshold:0.9 --cache none paper default block-dual
  copy_out $R/traces_llada_*.json.gz
fi

if [[ $stage == bench || $stage == all ]]; then
  B="python -m dllm_cache.bench --shape llada-8b --no-progress --out-dir $R --compile on"
  $B --workload gsm8k --batch-size 1 16 --max-steps 33 --policy paper block-prefix block-dual \
     --trace $R/traces_llada_arith_threshold0.9_block-dual.json.gz --tag llada8b-gsm8k-stacked
  $B --workload hotpotqa --batch-size 1 4 --policy paper block-dual \
     --trace $R/traces_llada_multihop_threshold0.9_block-dual.json.gz --tag llada8b-hotpotqa-stacked
  copy_out $R/llada8b-*-stacked.*
fi

if [[ $stage == peers || $stage == all ]]; then
  $P --workload gsm8k --traces $R/traces_llada_arith
  $P --workload hotpotqa --traces $R/traces_llada_multihop
  copy_out $R/stacked.json $R/stacked.md $R/stacked.png
fi

# gen 512 (Fast-dLLM's long-generation setting). The proxy was trained on answers padded to 256
# tokens and cannot decode 512 (eval/traces/extend.py), so the gen-512 traces extend the gen-256
# ones with end-of-text blocks decoded as the proxy decodes them; accuracies are those at gen 256.
if [[ $stage == traces512 ]]; then
  python -m eval.traces.extend --gen 512 --name llada-gen512 $R/traces_llada_arith_fixed_paper.json.gz \
      $R/traces_llada_arith_threshold0.9_*.json.gz  # what eval.peers and the bench replay
fi

if [[ $stage == bench512 ]]; then
  python -m dllm_cache.bench --shape llada-8b --no-progress --out-dir $R --compile on \
     --workload gsm8k --batch-size 1 16 --max-steps 33 --policy paper frontier block-prefix block-dual \
     --trace $R/traces_llada-gen512_arith_threshold0.9_block-prefix.json.gz --tag llada8b-gsm8k512-stacked
  copy_out $R/llada8b-gsm8k512-stacked.*
fi

if [[ $stage == peers512 ]]; then
  $P --workload gsm8k --traces $R/traces_llada-gen512_arith
  copy_out $R/stacked.json $R/stacked.md $R/stacked.png
fi
