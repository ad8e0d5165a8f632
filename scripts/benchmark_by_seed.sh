#!/usr/bin/env bash
# One pair of the protocol-v2 benchmark seed by seed: every method of the pair's plan for one seed, then the
# follow-ups that need that seed's models, then the next seed. A machine that stops loses at most one seed's models
# (scripts/full_benchmarks.sh runs stage by stage over all seeds, so a stop there loses every seed's source model).
#
#   MONAI_UDA_THREADS=2 bash scripts/benchmark_by_seed.sh PAIR [SEED ...]    (default seeds 0 1 2; ../shared/data or
#                                                                           $MONAI_UDA_DATA)
#
# Per seed, after the benchmark rows (copied to docs/benchmarks/v2/PAIR/):
#   - the validator study's selection table (monai-uda select --bench: docs/benchmarks/selection/PAIR/seed<k>/)
#   - the early teacher analysis where the plan runs early (docs/benchmarks/early_teacher/PAIR/)
#   - the diminishing-returns checks on PAIR (scripts/budget_checks.py run --pair PAIR --seeds k)
# then the pages' tables. Everything resumes: a new machine continues from the committed rows.
set -uo pipefail
cd "$(dirname "$0")/.."
pair=${1:?usage: benchmark_by_seed.sh PAIR [SEED ...]}
shift
seeds=${*:-0 1 2}
data=${MONAI_UDA_DATA:-../shared/data}
out=results/v2/$pair
docs=docs/benchmarks
methods=$(python -m monai_uda.benchmarks.plan | awk -v p="$pair" '$1==p{m=$2} END{print m}')
[ -n "$methods" ] || { echo "=== $pair: not in the plan (python -m monai_uda.benchmarks.plan)" >&2; exit 1; }
if [ ! -f "$out/results.csv" ] && [ -f "$docs/v2/$pair/results.csv" ]; then
  mkdir -p "$out" && cp "$docs/v2/$pair"/{results.csv,per_image.csv} "$out/"
fi
threads=$(python scripts/pair_threads.py "$out" "$docs/v2/$pair" --default "${MONAI_UDA_THREADS:-1}") || exit 1
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads MONAI_UDA_THREADS=$threads
for seed in $seeds; do
  echo "=== $(date +%T) $pair seed $seed: $methods (threads $threads)"
  python -m monai_uda benchmark --pair "$pair" --data-root "$data" --methods "$methods" --seeds "$seed" \
    --out "$out" --resume --threads "$threads" || { echo "=== $pair seed $seed failed" >&2; exit 1; }
  mkdir -p "$docs/v2/$pair" && cp "$out"/{results.csv,results.md,results.png,per_image.csv} "$docs/v2/$pair/"
  python scripts/protocol_tables.py --write
  echo "=== $(date +%T) $pair seed $seed: selection table"
  sel=results/selection/$pair/seed$seed
  python -m monai_uda select --datalist "$out/$pair.json" --bench "$out" --seed "$seed" \
    --validators entropy im source_agreement consensus mixval foreground_fraction component_sizes w2_shift \
    --out "$sel" --threads "$threads" && mkdir -p "$docs/selection/$pair/seed$seed" && \
    cp "$sel"/selection.{csv,json,png} "$docs/selection/$pair/seed$seed/" && python scripts/validator_study.py --write
  if [[ ",$methods," == *",early,"* ]]; then
    echo "=== $(date +%T) $pair seed $seed: early teacher"
    mkdir -p "$docs/early_teacher/$pair" && \
      python scripts/early_teacher.py "$out" --datalist "$out/$pair.json" --out "$docs/early_teacher/$pair"
  fi
  echo "=== $(date +%T) $pair seed $seed: budget checks on $pair"
  python scripts/budget_checks.py run --pair "$pair" --seeds "$seed" --threads "$threads"
  python scripts/protocol_tables.py --write
  python scripts/fidelity_tables.py --write
done
echo "=== $(date +%T) $pair: seeds $seeds done"
