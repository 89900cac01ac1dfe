#!/usr/bin/env bash
# Headless Chromium for the frontend tests: Debian's `chromium` package (apt-get; CI runs as root), driven by the
# `playwright` Python package (test extras) through executable_path; `playwright install` is never used.
# Writes $CACHE/chromium.env: CHROMIUM_PATH.
set -euo pipefail
. "$(dirname "$0")/common.sh"
BIN="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$BIN" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "!!! $BIN is missing and this is not root: run 'apt-get install chromium' (Debian) or set CHROMIUM_PATH" >&2
        exit 1
    fi
    echo "Chromium: installing Debian's chromium package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core fonts-liberation >/dev/null
fi
"$BIN" --version
cat > "$CACHE/chromium.env" <<ENV
export CHROMIUM_PATH="$BIN"
ENV
echo "Chromium: wrote $CACHE/chromium.env"
