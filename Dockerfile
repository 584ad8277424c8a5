# syntax=docker/dockerfile:1
# Two images of the service, from one file:
#   edge           python slim + ONNX Runtime, no torch: serves model.onnx exports (small x86 / ARM boxes)
#   edge-openvino  python slim + OpenVINO, no torch: the same exports, bf16/INT8 and Intel iGPU/NPU devices
#   full           + PyTorch (CPU wheels): the PyTorch backend and the tools (`mvit fetch`, `convert`, `export`)
#   gpu            + PyTorch (CUDA wheels): the PyTorch backend on an NVIDIA GPU, with CUDA graphs
#
#   docker build --target edge -t mobilevitv2-serve:edge .
#   docker build --target edge-openvino -t mobilevitv2-serve:edge-openvino .
#   docker build --target full -t mobilevitv2-serve:full .
#   docker build --target gpu -t mobilevitv2-serve:gpu .    # run with --gpus 1 (NVIDIA Container Toolkit)
#   docker buildx build --platform linux/amd64,linux/arm64 --target edge -t REGISTRY/mobilevitv2-serve:edge --push .
#
# Models come from the /models volume (fetched and exported with the full image or install), or are baked
# into the edge image at build time:  --target edge-baked [--build-arg BAKE_MODELS="default mobilevitv2-0.5-imagenet1k-256"]
# Baking runs on the build machine's platform (ONNX exports are architecture-independent), so a
# multi-platform build fetches and exports once, natively, not under emulation.
# No architecture-specific wheels: pip picks each platform's own (torch and onnxruntime ship amd64 + arm64).
# Built and run for real by the image lane (tests/images, docs/deployment.md#building-and-testing-the-images).
ARG PYTHON_IMAGE=python:3.11-slim

# ---- the project as a wheel (pure Python: one wheel for every platform), and each image's packages
# installed into a prefix of their own here, so that nothing that built them (binutils, pip's cache, the
# wheel) reaches an image. Slimmed as an edge box wants: no test suites, no debug symbols. ----
FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --quiet --no-deps --wheel-dir /wheels .
COPY deploy/docker/pip-prefix.sh /usr/local/bin/pip-prefix
COPY deploy/docker/slim-prefix.sh /usr/local/bin/slim-prefix

FROM builder AS edge-packages
RUN sh /usr/local/bin/pip-prefix "$(ls /wheels/*.whl)[onnx]" && sh /usr/local/bin/slim-prefix /install

FROM builder AS edge-openvino-packages
RUN sh /usr/local/bin/pip-prefix "$(ls /wheels/*.whl)[openvino]" && sh /usr/local/bin/slim-prefix /install

# PyTorch's CPU wheels from PyTorch's CPU index, then the project with the export tools. TORCH_FIND_LINKS:
# a folder of wheels mounted into the build (`-v /opt/wheels:/opt/wheels:ro`), for machines that reach
# PyPI but not PyTorch's index (the image lane's).
FROM builder AS full-packages
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_REQUIREMENT="torch>=2.1"
ARG TORCH_FIND_LINKS=
RUN sh /usr/local/bin/pip-prefix --index-url "$TORCH_INDEX_URL" \
        ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} "$TORCH_REQUIREMENT" \
    && sh /usr/local/bin/pip-prefix "$(ls /wheels/*.whl)[export]" && sh /usr/local/bin/slim-prefix /install

# PyTorch's CUDA wheels bring the CUDA runtime and cuDNN; the host brings the NVIDIA driver.
FROM builder AS gpu-packages
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_REQUIREMENT="torch>=2.1"
ARG TORCH_FIND_LINKS=
RUN sh /usr/local/bin/pip-prefix --index-url "$TORCH_INDEX_URL" \
        ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} "$TORCH_REQUIREMENT" \
    && sh /usr/local/bin/pip-prefix "$(ls /wheels/*.whl)[torch]" && sh /usr/local/bin/slim-prefix /install

# ---- what every image shares: configuration, user, health check, entry point ----
FROM ${PYTHON_IMAGE} AS service
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MVIT_HOST=0.0.0.0 \
    MVIT_PORT=8000 \
    MVIT_MODEL_REPOSITORY=/models \
    HF_HOME=/models/.hf-home
RUN groupadd --system --gid 10001 mvit && useradd --system --uid 10001 --gid 10001 --create-home mvit \
    && mkdir -p /models && chown mvit:mvit /models
EXPOSE 8000
VOLUME ["/models"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MVIT_PORT', '8000') + '/health', timeout=2)"]
ENTRYPOINT ["mvit"]
CMD ["serve"]

# ---- the images: the packages last, one layer (COPY writes as root, whatever USER says) ----
FROM service AS edge
ENV MVIT_BACKEND=onnx
USER mvit
COPY --from=edge-packages /install /usr/local

FROM service AS edge-openvino
ENV MVIT_BACKEND=openvino
USER mvit
COPY --from=edge-openvino-packages /install /usr/local

FROM service AS full
ENV MVIT_BACKEND=torch
USER mvit
COPY --from=full-packages /install /usr/local

# Batches up to 32: a GPU runs a big batch in little more time than a small one
# (docs/performance.md#pytorch-reduced-precision-and-gpus).
FROM service AS gpu
ENV MVIT_BACKEND=torch \
    MVIT_DEVICE=cuda \
    MVIT_MAX_BATCH_SIZE=32
USER mvit
COPY --from=gpu-packages /install /usr/local

# ---- the edge image with its models fetched and exported at build time: no volume, no init container ----
FROM --platform=$BUILDPLATFORM full AS baked-models
ARG BAKE_MODELS=default
ARG HUB_REVISION=
# Not /models: a classic (non-BuildKit) builder drops what RUN writes under a VOLUME.
ENV MVIT_MODEL_REPOSITORY=/baked HF_HOME=/baked/.hf-home
USER root
RUN mvit fetch ${HUB_REVISION:+--hub-revision "$HUB_REVISION"} ${BAKE_MODELS} && mvit export --all

FROM edge AS edge-baked
COPY --from=baked-models --chown=10001:10001 /baked /models
