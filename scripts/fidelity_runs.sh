#!/usr/bin/env bash
# The runs of the fidelity page (docs/benchmarks/fidelity.md) beyond the protocol-v2 benchmark
# (scripts/full_benchmarks.sh), each resuming and copying its tables to docs/benchmarks/:
#
#   - BUDA-Seg against self-training over five seeds: seeds 3 and 4 of buda, selftrain and their source model on
#     A1 and B2 (v2_extra/<pair>_seeds34/; seeds 0-2 are the v2 rows)
#   - the demo pair (the package's simulated scanner shift, the one nearest to the early-features paper's
#     Calgary-Campinas) under v2: source, oracle, early, st, cbst, and bn / bn_reset (do target BatchNorm statistics
#     alone explain early's gain?) (v2/demo/)
#   - early on the demo pair with head training and refinement cap doubled, and at level 1 (early_variants/demo_cap24, demo_level1)
#   - whether the final output is the better teacher for the early head (early_teacher/<pair>/), on every pair
#     whose v2 run has `early` rows, and the early head at level 1 on A1 (early_variants/A1_level1/)
#   - BUDA-Seg's variance map against the errors (buda_uncertainty/<pair>/) on B2 once it has buda rows
#
#   bash scripts/fidelity_runs.sh [OUT_ROOT]        (default results; ../shared/data or $MONAI_UDA_DATA)
#
# One job per machine, one torch thread by default (MONAI_UDA_THREADS), as full_benchmarks.sh; a folder with finished
# rows (here or committed) keeps their thread count (scripts/pair_threads.py), and a new machine continues from the
# committed rows. The level-1 variant needs A1's v2 source models; the early-teacher and variance analyses run on the
# v2 folders that have the rows.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results}
data=${MONAI_UDA_DATA:-../shared/data}
default_threads=${MONAI_UDA_THREADS:-1}
docs=docs/benchmarks

prepare() {  # prepare(run folder, docs folder): continue from the committed rows; set the folder's thread count
  if [ ! -f "$1/results.csv" ] && [ -f "$2/results.csv" ]; then
    mkdir -p "$1" && cp "$2/results.csv" "$2/per_image.csv" "$1/"
  fi
  threads=$(python scripts/pair_threads.py "$1" "$2" --default "$default_threads") || return 1
  export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
}

copy() {  # copy(run folder, docs folder): the tables and per-image CSVs
  mkdir -p "$2" && for f in results.csv results.md results.png per_image.csv; do
    [ -f "$1/$f" ] && cp "$1/$f" "$2/"
  done
}

for pair in A1 B2; do
  echo "=== $(date +%T) $pair: buda, selftrain and source, seeds 3 4"
  prepare "$out/v2_extra/${pair}_seeds34" "$docs/v2_extra/${pair}_seeds34" || continue
  python -m monai_uda benchmark --pair $pair --data-root "$data" --methods source,buda,selftrain --seeds 3 4 \
    --out "$out/v2_extra/${pair}_seeds34" --resume --threads "$threads" && copy "$out/v2_extra/${pair}_seeds34" "$docs/v2_extra/${pair}_seeds34"
done

# on B2's v2 run where its buda models are on this machine (buda_uncertainty/B2), else on the seeds 3-4 run above,
# which made its own (buda_uncertainty/B2_seeds34)
for run in "$out/v2/B2:B2" "$out/v2_extra/B2_seeds34:B2_seeds34"; do
  if ls "${run%%:*}"/seed*/buda/variance_model.pt >/dev/null 2>&1; then
    echo "=== $(date +%T) BUDA-Seg variance vs errors: ${run##*:}"
    python scripts/buda_uncertainty.py "${run%%:*}" --out "$docs/buda_uncertainty/${run##*:}"
    break
  fi
done

echo "=== $(date +%T) demo pair under v2: source, oracle, early, st, cbst, bn, bn_reset"
demo=$(python -c "from monai_uda.data import ensure_demo_datalist; print(ensure_demo_datalist('$out/demo_pair', spatial_dims=2))" | tail -1)
prepare "$out/v2/demo" "$docs/v2/demo" && \
python -m monai_uda benchmark --datalist "$demo" --methods source,oracle,early,st,cbst,bn,bn_reset --seeds 0 1 2 \
  --out "$out/v2/demo" --resume --threads "$threads" && copy "$out/v2/demo" "$docs/v2/demo"

# does early's gap to ST/CBST on the demo pair close with a longer budget (head training and refinement cap
# doubled) or more refined layers? On v2/demo's source models: where they are not on this machine (a card beside
# each: training finished), the first variant trains them again with v2/demo's seeds and thread count (the same
# models: its source rows must equal v2/demo's) and the second reuses them.
for variant in "cap24 early:max_epochs=24" "level1 early:head_levels=[1]"; do
  read -r name override <<< "$variant"
  echo "=== $(date +%T) demo: early, $override"
  prepare "$out/early_variants/demo_$name" "$docs/early_variants/demo_$name" || continue
  threads=$(python scripts/pair_threads.py "$out/v2/demo" "$docs/v2/demo" --default "$threads") || continue
  export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
  reuse=()  # v2/demo's source models, else those the first variant trained
  for from in "$out/v2/demo" "$out/early_variants/demo_cap24"; do
    if [ "$from" != "$out/early_variants/demo_$name" ] && ls "$from"/seed{0,1,2}/source/model.card.json >/dev/null 2>&1
    then reuse=(--source-from "$from"); break; fi
  done
  python -m monai_uda benchmark --datalist "$demo" --methods source,early --seeds 0 1 2 \
    --out "$out/early_variants/demo_$name" ${reuse[@]+"${reuse[@]}"} --override "$override" --resume \
    --threads "$threads" && copy "$out/early_variants/demo_$name" "$docs/early_variants/demo_$name"
done

echo "=== $(date +%T) A1: the early head at level 1 (refine L1 and L2), on the v2 source models"
if ls "$out"/v2/A1/seed{0,1,2}/source/model.card.json >/dev/null 2>&1 && prepare "$out/early_variants/A1_level1" "$docs/early_variants/A1_level1"
then
  python -m monai_uda benchmark --pair A1 --data-root "$data" --methods early --seeds 0 1 2 --out "$out/early_variants/A1_level1" \
    --source-from "$out/v2/A1" --override "early:head_levels=[1]" --resume --threads "$threads" && \
    copy "$out/early_variants/A1_level1" "$docs/early_variants/A1_level1" && \
    python scripts/early_teacher.py "$out/early_variants/A1_level1" --datalist "$out/v2/A1/A1.json" --out "$docs/early_teacher/A1_level1"
fi

for run in "$out/v2/A1" "$out/v2/B2" "$out/v2/C1" "$out/v2/D1" "$out/v2/demo"; do
  name=$(basename "$run")
  if ls "$run"/seed*/early/model.pt >/dev/null 2>&1; then
    echo "=== $(date +%T) early teacher: $name"
    dl=$([ "$name" = demo ] && echo "$demo" || echo "$run/$name.json")
    python scripts/early_teacher.py "$run" --datalist "$dl" --out "$docs/early_teacher/$name"
  fi
done

python scripts/fidelity_tables.py --write
