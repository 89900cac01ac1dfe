#!/usr/bin/env bash
# Prepare Stable Diffusion WebUI Forge for the real-host tests (headless, CPU, offline at test time).
#
# Idempotent: the result lives in $CACHE/forge and is reused while its inputs are unchanged (the Forge and
# repositories tarballs, this script, the base Python); any change, or an unfinished earlier build, rebuilds it
# from scratch (the stamp is written last). Writes $CACHE/forge.env with what the tests read:
#   FORGE_PATH       the WebUI folder (read-only for the tests: they pass --data-dir)
#   FORGE_PYTHON     its venv's python (Forge's pinned requirements_versions.txt)
#   FORGE_FREEZE     `pip freeze` of that venv before any extension touched it
#   FORGE_TESTTOOLS  pytest, kept outside the WebUI venv (PYTHONPATH) to run library tests at Forge's pins
# Needs network (PyPI) only when it (re)builds.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${REWARDLOOP_HOST_CACHE:-$HOME/.cache/rewardloop/hosts}"
if [ -z "${REWARDLOOP_HOSTS_SRC:-}" ]; then
  for d in "$REPO/../shared/hosts" "$REPO/../../shared/hosts" /work/shared/hosts; do
    if [ -f "$d/stable-diffusion-webui-forge-dfdcbab6.tar.gz" ]; then REWARDLOOP_HOSTS_SRC="$d"; break; fi
  done
fi
SRC="${REWARDLOOP_HOSTS_SRC:?prepare_forge: host sources not found; set REWARDLOOP_HOSTS_SRC to the folder with the Forge tarball}"
FORGE_TGZ="$SRC/stable-diffusion-webui-forge-dfdcbab6.tar.gz"
REPOS_TGZ="$SRC/webui-repositories.tar.gz"
BASE_PY="${REWARDLOOP_FORGE_BASE_PYTHON:-python3.11}"   # the Python Forge supports
command -v "$BASE_PY" >/dev/null || { echo "prepare_forge: $BASE_PY not found (Forge needs Python 3.11)" >&2; exit 1; }

stamp="$( { sha256sum "$FORGE_TGZ" "$REPOS_TGZ" "$0" | cut -d' ' -f1; "$BASE_PY" -VV; } | sha256sum | cut -d' ' -f1)"
DEST="$CACHE/forge"
PY="$DEST/venv/bin/python"
if [ -f "$DEST/stamp" ] && [ "$(cat "$DEST/stamp")" = "$stamp" ] && [ -x "$PY" ]; then
  echo "prepare_forge: cached ($DEST)"
else
  t0=$SECONDS
  echo "prepare_forge: building Forge in $DEST (first run, inputs changed, or an unfinished build)"
  rm -rf "$DEST"
  mkdir -p "$DEST"
  tar xzf "$FORGE_TGZ" -C "$DEST"
  mv "$DEST"/stable-diffusion-webui-forge-* "$DEST/webui"
  tar xzf "$REPOS_TGZ" -C "$DEST/webui"
  "$BASE_PY" -m venv "$DEST/venv"
  pipq() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
  # Forge's own pins (the resolver picks torch/torchvision itself); joblib is imported by Forge's built-in
  # soft-inpainting script at start.
  (cd "$DEST/webui" && pipq -r requirements_versions.txt joblib==1.4.2)
  "$PY" -m pip freeze --disable-pip-version-check > "$DEST/freeze-pristine.txt"
  # pytest to run the library's tests at Forge's pins, outside the WebUI venv (so its freeze stays Forge's)
  pipq --no-deps --target "$DEST/testtools" pytest==8.3.5 pluggy==1.5.0 iniconfig==2.0.0
  echo "$stamp" > "$DEST/stamp"
  echo "prepare_forge: built in $((SECONDS - t0)) s"
fi
cat > "$CACHE/forge.env.tmp" <<ENV
export FORGE_PATH="$DEST/webui"
export FORGE_PYTHON="$PY"
export FORGE_FREEZE="$DEST/freeze-pristine.txt"
export FORGE_TESTTOOLS="$DEST/testtools"
ENV
mv "$CACHE/forge.env.tmp" "$CACHE/forge.env"
echo "prepare_forge: wrote $CACHE/forge.env"
