#!/usr/bin/env bash
# The protocol-v2 benchmark (docs/benchmarks/protocol.md): every pair, every method, seeds 0 1 2, stage by
# stage; each stage resumes the previous one (finished (method, seed) rows and each seed's source model are
# kept), so an interrupted run continues where it stopped. After each stage the pair's tables and CSVs are
# copied to docs/benchmarks/v2/<pair>/ (commit them as they come, so another machine can continue).
#
#   MONAI_UDA_THREADS=2 bash scripts/full_benchmarks.sh [OUT_ROOT]   (default results/v2; ../shared/data or
#                                                                    $MONAI_UDA_DATA)
#
# One job per machine: it sets one torch thread per core it may use (MONAI_UDA_THREADS, default 1 so that
# a second core stays free for other work; the rows record the thread count). A pair that has finished rows keeps
# their thread count (a seed's source model trained again is deterministic per seed and thread count).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/v2}
data=${MONAI_UDA_DATA:-../shared/data}
default_threads=${MONAI_UDA_THREADS:-1}
run() {
  local pair=$1 methods=$2
  local threads
  threads=$(python scripts/pair_threads.py "$out/$pair" "docs/benchmarks/v2/$pair" --default "$default_threads") || return 1
  export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
  echo "=== $(date +%T) $pair: $methods (threads $threads)"
  # a new machine continues from the committed rows (a seed's source model is retrained, deterministically,
  # only when a method still to run needs it)
  if [ ! -f "$out/$pair/results.csv" ] && [ -f "docs/benchmarks/v2/$pair/results.csv" ]; then
    mkdir -p "$out/$pair" && cp "docs/benchmarks/v2/$pair"/{results.csv,per_image.csv} "$out/$pair/"
    for f in superseded_results.csv superseded_per_image.csv; do
      [ ! -f "docs/benchmarks/v2/$pair/$f" ] || cp "docs/benchmarks/v2/$pair/$f" "$out/$pair/"
    done
  fi
  # rows made at a budget the bundle has since left (scripts/stale_rows.py) are run again
  if [ -f "$out/$pair/results.csv" ]; then python scripts/stale_rows.py "$out/$pair" --drop || return 1; fi
  python -m monai_uda benchmark --pair "$pair" --data-root "$data" --methods "$methods" --seeds 0 1 2 \
    --out "$out/$pair" --resume --threads "$threads" || { echo "=== $pair failed" >&2; return 1; }
  mkdir -p "docs/benchmarks/v2/$pair"
  cp "$out/$pair"/{results.csv,results.md,results.png,per_image.csv} "docs/benchmarks/v2/$pair/"
  for f in superseded_results.csv superseded_per_image.csv; do
    [ ! -f "$out/$pair/$f" ] || cp "$out/$pair/$f" "docs/benchmarks/v2/$pair/"
  done
  python scripts/protocol_tables.py --write
}
# the stages of monai_uda/benchmarks/plan.py (one line per stage: PAIR METHODS); the label-free pick `selected`
# comes last per pair (it chooses among the seed's finished models; resume keeps its rows)
stages=$(python -m monai_uda.benchmarks.plan) || { echo "=== cannot read the plan (python -m monai_uda.benchmarks.plan)" >&2; exit 1; }
while read -r pair methods; do run "$pair" "$methods" </dev/null; done <<< "$stages"
