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
# in at build time:  --build-arg MODELS=baked [--build-arg BAKE_MODELS="default mobilevitv2-0.5-imagenet1k-256"]
# Baking runs on the build machine's platform (ONNX exports are architecture-independent), so a
# multi-platform build fetches and exports once, natively, not under emulation.
# No architecture-specific wheels: pip picks each platform's own (torch and onnxruntime ship amd64 + arm64).
ARG PYTHON_IMAGE=python:3.11-slim
ARG MODELS=volume

# ---- the project as a wheel (pure Python: one wheel for every platform) ----
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- what both images share: configuration, user, health check, entry point ----
FROM ${PYTHON_IMAGE} AS service
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MVIT_HOST=0.0.0.0 \
    MVIT_PORT=8000 \
    MVIT_MODEL_REPOSITORY=/models \
    HF_HOME=/models/.hf-home
RUN useradd --system --uid 10001 --create-home mvit && mkdir -p /models && chown mvit /models
EXPOSE 8000
VOLUME ["/models"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MVIT_PORT', '8000') + '/health', timeout=2)"]
ENTRYPOINT ["mvit"]
CMD ["serve"]

# ---- PyTorch CPU wheels from PyTorch's CPU index, then the project with the export tools ----
FROM service AS torch-runtime
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.1"
COPY --from=wheel /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[export]" && rm -rf /wheels

# ---- the model repository: empty (a volume is mounted), or fetched + exported at build time ----
FROM ${PYTHON_IMAGE} AS models-volume
RUN mkdir -p /models

FROM --platform=$BUILDPLATFORM torch-runtime AS models-baked
ARG BAKE_MODELS=default
ARG HUB_REVISION=
RUN mvit fetch ${HUB_REVISION:+--hub-revision "$HUB_REVISION"} ${BAKE_MODELS} && mvit export --all

FROM models-${MODELS} AS models

# ---- the images ----
FROM service AS edge
COPY --from=wheel /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[onnx]" && rm -rf /wheels
COPY --from=models --chown=10001:10001 /models /models
ENV MVIT_BACKEND=onnx
USER mvit

FROM service AS edge-openvino
COPY --from=wheel /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[openvino]" && rm -rf /wheels
COPY --from=models --chown=10001:10001 /models /models
ENV MVIT_BACKEND=openvino
USER mvit

FROM torch-runtime AS full
COPY --from=models --chown=10001:10001 /models /models
ENV MVIT_BACKEND=torch
USER mvit

# PyTorch's CUDA wheels bring the CUDA runtime and cuDNN; the host brings the NVIDIA driver. Batches up to
# 32: a GPU runs a big batch in little more time than a small one (docs/performance.md#pytorch-reduced-precision-and-gpus).
FROM service AS gpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "$TORCH_INDEX_URL" "torch>=2.1"
COPY --from=wheel /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[torch]" && rm -rf /wheels
COPY --from=models --chown=10001:10001 /models /models
ENV MVIT_BACKEND=torch \
    MVIT_DEVICE=cuda \
    MVIT_MAX_BATCH_SIZE=32
USER mvit
