#!/usr/bin/env bash
# One device call (nvidia-h200, <= 10 min): the shipped proxies' threshold-decoding rows on the held-out arith set
# (`run --threshold`: uncached, default, paper default, Kr 2, the token clock, block-dual at threshold 0.9, each
# paired with the uncached row of its decoding; issue 28, item 4), written to $W and merged into the committed
# eval/results/frontier_<name>.json.gz (rows keep the machine they ran on); then, while time is left, the step
# decoding's rows again (ALL=1; FAMILIES, default arith), so every row of those tasks carries per-problem
# correctness (exact McNemar). MODELS (default "llada dream") picks the proxies. Packs eval/results/frontier*
# into $OUT/frontier_results.tgz after each step.
#
#   run(command="bash eval/frontier/gpu.sh", timeout_s=590)
#   run(command="THR_ROWS=0 ALL=1 bash eval/frontier/gpu.sh", timeout_s=590)   # the step rows alone
#   (on an H200 LLaDA's arith rows took ~4 min, so Dream's did not fit in the same call; the rest:)
#   run(command="THR_ROWS=0 ALL=1 MODELS=dream FAMILIES=arith,hotpot bash eval/frontier/gpu.sh", timeout_s=590)
#   PYTHONPATH=. python -m eval.frontier report       # after untarring: frontier.json/.md
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
bash eval/gpu/install_checkout.sh || exit 1  # a bare GPU machine: dllm_cache.hooks comes from an install
W=${W:-build/frontier_gpu}
mkdir -p "$W"
MODELS=${MODELS:-llada dream}
declare -A DIR=([llada]=eval/tiny/model [dream]=eval/tiny/dream_model)
THR="uncached thr=0.9,default thr=0.9,paper-default thr=0.9,default Kr=2 thr=0.9,default tokens-clock thr=0.9,block-dual thr=0.9"
save() {
  python -m eval.frontier report > /dev/null 2>&1 || true
  [ -n "${OUT:-}" ] && tar -czf "$OUT/frontier_results.tgz" eval/results/frontier* 2>/dev/null
  return 0
}
for name in $MODELS; do
  [ "${THR_ROWS:-1}" = 0 ] && break
  set -- "$name" "${DIR[$name]}"
  echo "[frontier gpu.sh] $(date +%T) $1 threshold rows" >&2
  timeout 150 python -m eval.frontier run --model "$2" --name "$1" --families arith --threshold --only "$THR" \
    --out-dir "$W/$1-thr" --no-progress && \
    python -m eval.frontier merge --into "eval/results/frontier_$1.json.gz" "$W/$1-thr/frontier_$1.json"
  save
done
if [ -n "${ALL:-}" ]; then  # the step decoding's rows, re-run whole (replaces those tasks' rows of the committed file)
  for name in $MODELS; do
    set -- "$name" "${DIR[$name]}"
    echo "[frontier gpu.sh] $(date +%T) $1 ${FAMILIES:-arith}, every step-decoding row" >&2
    timeout 500 python -m eval.frontier run --model "$2" --name "$1" --families "${FAMILIES:-arith}" --out-dir "$W/$1-all" \
      --no-progress && \
      python -m eval.frontier merge --into "eval/results/frontier_$1.json.gz" "$W/$1-all/frontier_$1.json"
    save
  done
fi
ls -la "${OUT:-.}"
