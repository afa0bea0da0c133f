#!/usr/bin/env bash
# Set up (or reuse) ./.venv, make sure Fashion-MNIST is present, and run `uqkit bench`.
# Extra arguments go to `uqkit bench` (e.g. --quick, --methods deterministic,deep-ensemble).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh bench
fmnist=${UQKIT_DATA:-/usr/share/datasets/fashion-mnist}
if [ ! -e "$fmnist/t10k-labels-idx1-ubyte.gz" ] && [ ! -e "$fmnist/t10k-labels-idx1-ubyte" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "[uqkit] installing Debian package dataset-fashion-mnist"
        apt-get install -y -q dataset-fashion-mnist >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
    elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
        sudo apt-get install -y -q dataset-fashion-mnist >/dev/null
    else
        echo "[uqkit] Fashion-MNIST not found in $fmnist. Install it with 'apt-get install dataset-fashion-mnist'"
        echo "        or put the four official IDX files in a directory and set UQKIT_DATA to it."
        exit 1
    fi
fi
exec .venv/bin/uqkit bench "$@"
