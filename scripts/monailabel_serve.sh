#!/usr/bin/env bash
# Serve a trained/adapted monai-uda bundle with MONAI Label (its stock "monaibundle" app).
#
#   bash scripts/monailabel_serve.sh BUNDLE STUDIES_DIR [PORT]
#
#   BUNDLE       a bundle name under bundles/ (e.g. bn_reestimation_segmentation) or a bundle folder;
#                it must hold the model its configs/inference.json loads (models/model.pt, or
#                models/self_train/model.pt for pixel_alignment_segmentation).
#   STUDIES_DIR  folder of target images (e.g. *.nii.gz); MONAI Label's local datastore. Labels it
#                saves go to STUDIES_DIR/labels/.
#   PORT         default 8000. The server listens on 127.0.0.1 only.
#
#   MONAI_UDA_LABEL_OVERRIDES='{"spatial_dims": 3}'  config overrides (a JSON object) applied to the
#                bundle's inference.json, as `python -m monai.bundle run ... --spatial_dims 3` would
#                (the default app only); needed to serve a bundle trained/adapted in 3D.
#
# The MONAI Label environment is created on first use (scripts/monailabel/setup_env.sh; minutes,
# ~8 GB) at ${MONAI_UDA_LABEL_ENV:-$HOME/.cache/monai-uda/monailabel-env} and reused afterwards.
# The app (MONAI_UDA_LABEL_APP=uda, the default: scripts/monailabel_app/main.py; or =monaibundle,
# MONAI Label's stock sample app) is copied into
# ${MONAI_UDA_LABEL_APP_DIR:-$HOME/.cache/monai-uda/monailabel-apps/<bundle name>}/<app>/, where
# MONAI Label also writes its logs; its model/<bundle> is re-linked on every start
# (scripts/monailabel/link_bundle.py). The bundle itself is not modified.
# Runs in the foreground (exec); stop it with Ctrl-C or by signalling its process.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

die() { echo "monailabel_serve: error: $*" >&2; exit 2; }

[ $# -ge 2 ] && [ $# -le 3 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
BUNDLE_ARG="$1"
STUDIES="$2"
PORT="${3:-8000}"
[[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "PORT must be a number in 1..65535, got '$PORT'"

# --- the bundle: a folder, or a name under bundles/ ---
if [ -d "$BUNDLE_ARG" ]; then
    BUNDLE="$(cd "$BUNDLE_ARG" && pwd)"
elif [ -d "$REPO/bundles/$BUNDLE_ARG" ]; then
    BUNDLE="$REPO/bundles/$BUNDLE_ARG"
else
    die "bundle '$BUNDLE_ARG' not found (neither a folder nor $REPO/bundles/$BUNDLE_ARG; available: $(ls "$REPO/bundles" | tr '\n' ' '))"
fi
NAME="$(basename "$BUNDLE")"
[ -f "$BUNDLE/configs/inference.json" ] || die "$BUNDLE is not a bundle: configs/inference.json not found"
[ -f "$BUNDLE/configs/metadata.json" ] || die "$BUNDLE is not a bundle: configs/metadata.json not found"
# quick check (stdlib python) before the slow first-time env setup; link_bundle.py later resolves
# inference.json's "checkpoint" exactly with MONAI's ConfigParser
python3 "$HERE/monailabel/link_bundle.py" --precheck "$BUNDLE" || exit 2

# --- the studies folder ---
[ -d "$STUDIES" ] || die "studies folder '$STUDIES' not found (make a folder of target images, e.g. *.nii.gz)"
STUDIES="$(cd "$STUDIES" && pwd)"

# --- config overrides for the default app ---
OVERRIDES="${MONAI_UDA_LABEL_OVERRIDES:-}"
if [ -n "$OVERRIDES" ]; then
    [ "${MONAI_UDA_LABEL_APP:-uda}" = uda ] || die "MONAI_UDA_LABEL_OVERRIDES needs the default app (MONAI_UDA_LABEL_APP=uda)"
    python3 -c 'import json, sys; assert isinstance(json.loads(sys.argv[1]), dict)' "$OVERRIDES" 2>/dev/null \
        || die "MONAI_UDA_LABEL_OVERRIDES must be a JSON object, e.g. '{\"spatial_dims\": 3}', got '$OVERRIDES'"
fi

# --- the environment (created once) ---
ENV_DIR="$(bash "$HERE/monailabel/setup_env.sh" | tail -n 1)"
PY="$ENV_DIR/bin/python"
# the checkout's monai_uda wins over the copy installed in the env (bundle configs import it)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# local bundles only: never ask the model zoo (no network); bundle names are folder names
export BUNDLE_DOWNLOAD_SRC="${BUNDLE_DOWNLOAD_SRC:-ngc}"

# --- the app (monailabel's bin/monailabel wrapper runs whatever "python" is on PATH: call the env's) ---
#   uda (default): scripts/monailabel_app/main.py, MONAI Label's BundleInferTask with 2D labels that
#                  match their image (H x W x 1 for NIfTI, H x W for PNG/TIFF) written as uint8
#   monaibundle:   MONAI Label's own sample-apps/monaibundle, copied from the installed wheel
#                  (loads the bundles too, but writes 2D labels as 1 x H x W float32; PNG fails)
WORK="${MONAI_UDA_LABEL_APP_DIR:-$HOME/.cache/monai-uda/monailabel-apps/$NAME}"
case "${MONAI_UDA_LABEL_APP:-uda}" in
    uda)
        APP="$WORK/uda"
        mkdir -p "$APP"
        cp "$HERE/monailabel_app/main.py" "$APP/main.py" ;;
    monaibundle)
        APP="$WORK/monaibundle"
        [ -f "$APP/main.py" ] || "$PY" -m monailabel.main apps --download --name monaibundle --output "$WORK" >&2 ;;
    *) die "MONAI_UDA_LABEL_APP must be 'uda' or 'monaibundle', got '${MONAI_UDA_LABEL_APP}'" ;;
esac
export MONAI_LABEL_SESSION_PATH="${MONAI_LABEL_SESSION_PATH:-$WORK/sessions}"
"$PY" "$HERE/monailabel/link_bundle.py" "$BUNDLE" "$APP" >&2 || exit 2

echo "monailabel_serve: serving $NAME from $BUNDLE at http://127.0.0.1:$PORT (studies: $STUDIES)" >&2
exec "$PY" -m monailabel.main start_server \
    --app "$APP" --studies "$STUDIES" --host 127.0.0.1 --port "$PORT" \
    --conf models "$NAME" --conf zoo_source ngc --conf preload false \
    --conf sam2 false --conf skip_trainers true ${OVERRIDES:+--conf bundle_overrides "$OVERRIDES"}
