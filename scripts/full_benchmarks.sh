#!/usr/bin/env bash
# The README's full-mode benchmark tables, stage by stage (every stage resumes the previous one).
#
#   bash scripts/full_benchmarks.sh [OUT_ROOT]        (default results/full; ../shared/data or $MONAI_UDA_DATA)
#
# Each stage passes the cumulative method list to `monai-uda benchmark --resume`, so finished
# (method, seed) rows and the trained source model are kept and an interrupted run continues where it
# stopped. After each stage the tables and charts are copied to docs/benchmarks/<pair>/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/full}
data=${MONAI_UDA_DATA:-../shared/data}
s1="source,oracle,bn"
s2="$s1,early,st,cbst"
s3="$s2,buda,selftrain,mcdropout"
s4="$s3,rf,enhancer,s2d,s2d_noteacher,s2d_norect"
run() {
  local pair=$1 methods=$2
  echo "=== $(date +%T) $pair: $methods"
  python -m monai_uda benchmark --pair "$pair" --data-root "$data" --methods "$methods" --out "$out/$pair" --resume \
    || { echo "=== $pair failed" >&2; return 1; }
  mkdir -p "docs/benchmarks/$pair"
  cp "$out/$pair"/results.{csv,md,png} "docs/benchmarks/$pair/"
}
for p in A1 B2 C1 D1; do run $p "$s1"; done
for p in A1 B2 C1 D1; do run $p "$s2"; done
for p in A1 B2 C1 D1; do run $p "$s3"; done
for p in A1 B2; do run $p "$s4"; done
run C1 "$s4,past,fda,histmatch"
run D1 "$s3,past,fda,histmatch"
