#!/usr/bin/env bash
# Run first on a bare GPU machine (it has torch and transformers, no network): installs this checkout in editable
# mode without dependencies, so the top-level hooks/ folder resolves as dllm_cache.hooks, as `pip install -e .` maps
# it on a development machine. A no-op where dllm_cache already imports.
#
#   bash eval/gpu/install_checkout.sh && PYTHONPATH=. python -m eval.<study> ...
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
if ! "$PY" -c "import dllm_cache.hooks" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "install_checkout: 'pip install --no-deps --no-build-isolation -e .' failed (setuptools >= 64 needed)" >&2; exit 1; }
fi
(cd /tmp && "$PY" -c "import dllm_cache.hooks as h; print('dllm_cache.hooks from', h.__file__)")
