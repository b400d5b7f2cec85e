#!/usr/bin/env bash
# The whole GPU session in one command, for the device tool (run from the repository root):
#   bash bench/device_session.sh [budget seconds, default 450] [more options of `python -m bench.device`...]
# Installs the peer wheels carried in .whl/ (e3nn-jax, dm-haiku, cuequivariance; see the README) into a private
# folder, then runs `python -m bench.device`, which streams every measurement into $OUT as it goes.
set -u
OUT=${OUT:-/tmp/device_out}
BUDGET=${1:-450}
shift || true
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >"$OUT/log.txt" 2>&1 || echo "wheel install failed (see log.txt); peers will be missing"
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
python3 -m bench.device --out "$OUT" --budget "$BUDGET" "$@"
