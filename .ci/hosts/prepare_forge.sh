#!/usr/bin/env bash
# Stable Diffusion WebUI Forge (../shared/hosts/stable-diffusion-webui-forge-*.tar.gz + webui-repositories.tar.gz)
# in its own Python 3.11 venv with Forge's pinned requirements_versions.txt, exactly as Forge's launcher would
# install them (its resolver picks torch/torchvision itself: this venv is also the low end of the versions the
# library is tested at). joblib is added because Forge's built-in soft-inpainting script imports it at start.
# The pack is NOT installed here: the tests install it the way the WebUI does (a folder in extensions/ and its
# install.py run by the launcher's own run_extension_installer), under a --data-dir of their own.
# Writes $CACHE/forge.env:
#   FORGE_PATH       the WebUI folder (the tests never write into it: they pass --data-dir)
#   FORGE_PYTHON     its venv's python
#   FORGE_FREEZE     `pip freeze` of that venv before any extension touched it
#   FORGE_TESTTOOLS  pytest (+ pluggy, iniconfig) outside the WebUI venv, to run the library's tests at Forge's pins
set -euo pipefail
. "$(dirname "$0")/common.sh"
SRC="$(hosts_src)"
TAR="$(ls "$SRC"/stable-diffusion-webui-forge-*.tar.gz 2>/dev/null | head -1)"
REPOS="$SRC/webui-repositories.tar.gz"
[ -f "$TAR" ] && [ -f "$REPOS" ] || { echo "!!! Forge or webui-repositories tarball missing in $SRC" >&2; exit 1; }
PY="${REWARDLOOP_FORGE_BASE_PYTHON:-python3.11}"   # the Python Forge supports
command -v "$PY" >/dev/null || { echo "!!! $PY not found: Forge needs Python 3.11" >&2; exit 1; }
DIR="$CACHE/forge"
# what the result depends on (not common.sh: it only finds the sources)
STAMP="$(stamp_of "$TAR" "$REPOS" "$0" <(echo "$("$PY" -c 'import sys; print(sys.version)')"))"
if [ -f "$DIR/stamp" ] && [ "$(cat "$DIR/stamp")" = "$STAMP" ] && [ -x "$DIR/venv/bin/python" ]; then
    echo "Forge: cached in $DIR (inputs unchanged)"
else
    t0=$SECONDS
    echo "Forge: preparing from scratch in $DIR"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    tar xzf "$TAR" -C "$DIR"
    mv "$DIR"/stable-diffusion-webui-forge-* "$DIR/webui"
    tar xzf "$REPOS" -C "$DIR/webui"
    [ -f "$DIR/webui/launch.py" ] && [ -d "$DIR/webui/repositories/huggingface_guess" ] \
        || { echo "!!! unexpected Forge tarball layout" >&2; exit 1; }
    "$PY" -m venv "$DIR/venv"
    (cd "$DIR/webui" && pip_q "$DIR/venv/bin/python" -r requirements_versions.txt joblib==1.4.2)
    "$DIR/venv/bin/python" -m pip freeze --disable-pip-version-check > "$DIR/freeze-pristine.txt"
    # pytest for the library's tests at Forge's pins, outside the WebUI venv so that its freeze stays Forge's
    pip_q "$DIR/venv/bin/python" --no-deps --target "$DIR/testtools" pytest==8.3.5 pluggy==1.5.0 iniconfig==2.0.0
    echo "$STAMP" > "$DIR/stamp"
    echo "Forge: prepared in $((SECONDS - t0)) s"
fi
"$DIR/venv/bin/python" -c "import torch, transformers, diffusers; print('Forge venv: torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
cat > "$CACHE/forge.env" <<ENV
export FORGE_PATH="$DIR/webui"
export FORGE_PYTHON="$DIR/venv/bin/python"
export FORGE_FREEZE="$DIR/freeze-pristine.txt"
export FORGE_TESTTOOLS="$DIR/testtools"
ENV
echo "Forge: wrote $CACHE/forge.env"
