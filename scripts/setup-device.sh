#!/usr/bin/env bash
# The Python packages the service needs that a lent GPU machine lacks, as wheels in .whl/ (git-ignored),
# for benchmarks/scale_up.sh to install there: that machine reaches no package registry, and its image
# already holds torch (CUDA), torchvision, numpy, Pillow, ONNX Runtime, uvloop, httpx, scikit-image,
# PyYAML and prometheus-client (the device tool's notes list them). The versions are this checkout's
# venv's, for that machine's Python (3.12, x86-64). Run it here, then call the device with carry [".whl"].
#   bash scripts/setup-device.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${1:-3.12}"
# The service's pure-Python dependencies all travel, so that the machine's own older copies (anyio, click,
# ...) cannot mismatch; the compiled ones it has (numpy, Pillow, PyYAML, uvloop) stay.
packages=(fastapi starlette uvicorn httptools pydantic pydantic-core pydantic-settings python-dotenv
    annotated-types annotated-doc typing-inspection typing-extensions python-multipart pybase64
    opentelemetry-api anyio idna click h11 prometheus-client)

pins=()
for name in "${packages[@]}"; do
    version="$(python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
    [ -n "$version" ] || { echo "setup-device: $name is not installed here: run scripts/setup-dev.sh first" >&2; exit 1; }
    pins+=("$name==$version")
done
rm -rf .whl && mkdir .whl
python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "${pins[@]}"
ls .whl
du -sh .whl
