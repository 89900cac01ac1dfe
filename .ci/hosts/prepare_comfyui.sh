#!/usr/bin/env bash
# ComfyUI v0.3.64 from ../shared/hosts/ComfyUI-v0.3.64.tar.gz, in its own virtual environment (like a user's
# ComfyUI): torch/torchvision at the test venv's versions (REWARDLOOP_TORCH_CONSTRAINTS), then ComfyUI's
# requirements.txt under the same constraints, so they cannot move torch/torchvision (a torchaudio that does not
# match only disables ComfyUI's audio nodes). The pack is NOT installed here: the tests install it the way
# ComfyUI-Manager does (a folder in custom_nodes + the pack's install.py run with this Python).
# Writes $CACHE/comfyui.env: COMFYUI_PATH, COMFYUI_PYTHON.
set -euo pipefail
. "$(dirname "$0")/common.sh"
SRC="$(hosts_src)"
TAR="$SRC/ComfyUI-v0.3.64.tar.gz"
[ -f "$TAR" ] || { echo "!!! $TAR is missing: cannot prepare ComfyUI" >&2; exit 1; }
DIR="$CACHE/comfyui"
CONSTRAINTS="${REWARDLOOP_TORCH_CONSTRAINTS:-}"
PY="${REWARDLOOP_HOST_PYTHON:-python3}"
STAMP="$(stamp_of "$TAR" "$0" "$(dirname "$0")/common.sh" ${CONSTRAINTS:+"$CONSTRAINTS"} \
         <(echo "$("$PY" -c 'import sys; print(sys.version)')"))"
if [ -f "$DIR/stamp" ] && [ "$(cat "$DIR/stamp")" = "$STAMP" ] && [ -x "$DIR/venv/bin/python" ]; then
    echo "ComfyUI: cached in $DIR (inputs unchanged)"
else
    echo "ComfyUI: preparing from scratch in $DIR"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    tar xzf "$TAR" -C "$DIR"
    [ -f "$DIR/ComfyUI/main.py" ] || { echo "!!! $TAR has no ComfyUI/main.py" >&2; exit 1; }
    "$PY" -m venv "$DIR/venv"
    if [ -z "$CONSTRAINTS" ]; then  # outside .ci/run: PyPI's default torch, then pin what was installed
        pip_q "$DIR/venv/bin/python" torch torchvision
        CONSTRAINTS="$DIR/torch-constraints.txt"
        "$DIR/venv/bin/python" -m pip freeze | grep -iE '^(torch|torchvision)==' > "$CONSTRAINTS"
    else
        cp "$CONSTRAINTS" "$DIR/torch-constraints.txt"
        pip_q "$DIR/venv/bin/python" torch torchvision -c "$CONSTRAINTS"
    fi
    pip_q "$DIR/venv/bin/python" -r "$DIR/ComfyUI/requirements.txt" -c "$DIR/torch-constraints.txt"
    "$DIR/venv/bin/python" -m pip freeze > "$DIR/freeze-after-requirements.txt"
    echo "$STAMP" > "$DIR/stamp"
fi
"$DIR/venv/bin/python" -c "import torch, torchvision; print('ComfyUI venv: torch', torch.__version__, 'torchvision', torchvision.__version__)"
cat > "$CACHE/comfyui.env" <<ENV
export COMFYUI_PATH="$DIR/ComfyUI"
export COMFYUI_PYTHON="$DIR/venv/bin/python"
ENV
echo "ComfyUI: wrote $CACHE/comfyui.env"
