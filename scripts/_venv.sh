# Sourced by bench.sh and test.sh: create or reuse ./.venv, install torch 2.13.0 first (the local CPU
# build; a plain `torch` requirement would pull a multi-GB CUDA build), then uqkit with the given extras.
# Usage: source scripts/_venv.sh EXTRAS   (e.g. "bench" or "dev")
set -euo pipefail
_uqkit_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_uqkit_extras=${1:-bench}
PY=${PYTHON:-python3}
if [ ! -x "$_uqkit_root/.venv/bin/python" ]; then
    echo "[uqkit] creating virtual environment $_uqkit_root/.venv"
    "$PY" -m venv "$_uqkit_root/.venv"
fi
VENV_PY="$_uqkit_root/.venv/bin/python"
if ! "$VENV_PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    echo "[uqkit] installing torch==2.13.0"
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
fi
echo "[uqkit] installing uqkit[$_uqkit_extras]"
"$VENV_PY" -m pip install --quiet --disable-pip-version-check -e "$_uqkit_root[$_uqkit_extras]"
case ",$_uqkit_extras," in
    *,dev,*)  # test oracles, --no-deps: their torchvision requirement would pull another torch build
        echo "[uqkit] installing the test oracles (requirements-oracles.txt, --no-deps)"
        "$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-deps \
            -r "$_uqkit_root/requirements-oracles.txt"
        ;;
esac
