#!/usr/bin/env bash
# Run the MONAI Label serving test end to end: set up the MONAI Label env if needed (once; timed),
# then run tests/monailabel/ in the toolkit's Python (the test starts the real server through
# scripts/monailabel_serve.sh on a free 127.0.0.1 port and stops it at the end).
#
#   bash scripts/test_monailabel.sh [extra pytest args]
#
# Environment: MONAI_UDA_LABEL_ENV (where the env lives), PYTHON (the toolkit's python, default python).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/monailabel/setup_env.sh >/dev/null
echo "[test_monailabel] MONAI Label env ready after $(( $(date +%s) - start )) s" >&2
MONAI_UDA_LABEL_TEST=1 "${PYTHON:-python}" -m pytest -p no:xdist -q -rA tests/monailabel "$@"
