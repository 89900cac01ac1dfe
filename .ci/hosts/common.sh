# Shared by the host preparation scripts (sourced, not run).
# Each script prepares one host under $CACHE/<host>/, reuses it while its inputs are unchanged (a stamp file holds
# the hash of the inputs) and rebuilds it from scratch otherwise, then writes $CACHE/<host>.env with the variables
# the tests read. Inputs: REWARDLOOP_HOST_CACHE (default ~/.cache/rewardloop/hosts), REWARDLOOP_HOSTS_SRC (the
# folder with the host tarballs; default ../shared/hosts next to the checkout), REWARDLOOP_TORCH_CONSTRAINTS (a pip
# constraints file pinning torch/torchvision, written by .ci/run from the test venv).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${REWARDLOOP_HOST_CACHE:-$HOME/.cache/rewardloop/hosts}"
mkdir -p "$CACHE"

hosts_src() {
    local c
    for c in "${REWARDLOOP_HOSTS_SRC:-}" "$REPO/../shared/hosts" "$REPO/../../shared/hosts" /work/shared/hosts; do
        if [ -n "$c" ] && [ -d "$c" ]; then (cd "$c" && pwd); return 0; fi
    done
    echo "!!! host sources not found: set REWARDLOOP_HOSTS_SRC to the folder with the host tarballs" \
         "(looked in ${REWARDLOOP_HOSTS_SRC:-<unset>}, $REPO/../shared/hosts, $REPO/../../shared/hosts, /work/shared/hosts)" >&2
    return 1
}

# stamp_of FILE... -> one sha256 over the files' contents (missing files hash as their name)
stamp_of() {
    local f
    for f in "$@"; do
        if [ -f "$f" ]; then sha256sum "$f" | cut -d' ' -f1; else echo "missing:$f"; fi
    done | sha256sum | cut -d' ' -f1
}

# pip with quiet output, no version check
pip_q() { "$1" -m pip install -q --disable-pip-version-check "${@:2}" 2> >(grep -v "is ignored: it is neither" >&2); }
