#!/usr/bin/env bash
# Wheels of lm-eval and what it needs beyond the GPU machine's image (KINDS.md lists the image),
# for eval runs on the device machine, which cannot reach a package index:
#     bash eval/gpu/device_wheels.sh            # here, once: fills .whl/ (ignored), ~8 MB
#     run(carry=[".whl"]): python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#         --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
# Versions are those of this checkout's environment (pip show), so both machines run the same lm-eval.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PY=${PYTHON:-python}
BINARY="lm_eval datasets evaluate dill multiprocess pytablewriter DataProperty mbstrdecoder pathvalidate tabledata
        tcolorpy typepy chardet more-itertools"
SOURCE_ONLY="rouge-score sqlitedict word2number"   # sdists: pure Python, built into py3 wheels here
pins() { for n in "$@"; do echo "$n==$($PY -c "import importlib.metadata as m; print(m.version('$n'))")"; done; }
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $(pins $BINARY)
$PY -m pip wheel -q --no-deps -w .whl $(pins $SOURCE_ONLY)
# lm-eval's wheel is 9 MB, almost all of it its own task folders; our runs use eval/tasks only, and
# the device's travel limit (64 MiB with the repo) has no room for them: keep lm_eval/tasks/*.py.
$PY - <<'PY'
import pathlib, zipfile
wheel = next(pathlib.Path(".whl").glob("lm_eval-*.whl"))
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if not (item.filename.startswith("lm_eval/tasks/") and item.filename.count("/") > 2):
            dst.writestr(item, src.read(item))
slim.replace(wheel)
PY
du -sh .whl
