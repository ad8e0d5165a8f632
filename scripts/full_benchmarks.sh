#!/usr/bin/env bash
# The protocol-v2 benchmark (docs/benchmarks/protocol.md): every pair, every method, seeds 0 1 2, stage by
# stage; each stage resumes the previous one (finished (method, seed) rows and each seed's source model are
# kept), so an interrupted run continues where it stopped. After each stage the pair's tables and CSVs are
# copied to docs/benchmarks/v2/<pair>/ (commit them as they come, so another machine can continue).
#
#   bash scripts/full_benchmarks.sh [OUT_ROOT]        (default results/v2; ../shared/data or $MONAI_UDA_DATA)
#
# One job per machine: it sets one torch thread per core it may use (MONAI_UDA_THREADS, default 1 so that
# a second core stays free for other work; the rows record the thread count).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/v2}
data=${MONAI_UDA_DATA:-../shared/data}
threads=${MONAI_UDA_THREADS:-1}
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
s1="source,oracle,bn_source,bn,bn_reset"
s2="$s1,buda,selftrain,st,cbst,early"
s3="$s2,rf,enhancer,s2d,s2d_noteacher,s2d_norect"
s4="$s2,past,fda,histmatch"
run() {
  local pair=$1 methods=$2
  echo "=== $(date +%T) $pair: $methods"
  # a new machine continues from the committed rows (a seed's source model is retrained, deterministically,
  # only when a method still to run needs it)
  if [ ! -f "$out/$pair/results.csv" ] && [ -f "docs/benchmarks/v2/$pair/results.csv" ]; then
    mkdir -p "$out/$pair" && cp "docs/benchmarks/v2/$pair"/{results.csv,per_image.csv} "$out/$pair/"
  fi
  python -m monai_uda benchmark --pair "$pair" --data-root "$data" --methods "$methods" --seeds 0 1 2 \
    --out "$out/$pair" --resume --threads "$threads" || { echo "=== $pair failed" >&2; return 1; }
  mkdir -p "docs/benchmarks/v2/$pair"
  cp "$out/$pair"/{results.csv,results.md,results.png,per_image.csv} "docs/benchmarks/v2/$pair/"
  python scripts/protocol_tables.py --write
}
for p in A1 B2 C1 D1; do run $p "$s1"; done
for p in A1 B2 C1 D1; do run $p "$s2"; done
for p in A1 B2 C1; do run $p "$s3"; done
run C1 "$s3,past,fda,histmatch"
run D1 "$s4"
# last: the label-free pick among each seed's models (it must run after all of them; resume keeps its rows)
for p in A1 B2; do run $p "$s3,mcdropout,selected"; done
run C1 "$s3,past,fda,histmatch,mcdropout,selected"
run D1 "$s4,mcdropout,selected"
