# PyTorch CPU image of the service. (The torch-free ONNX "edge" target comes with the ONNX backend.)
# Build:  docker build -t mobilevitv2-serve .
# Run:    docker run -p 8000:8000 -v "$PWD/models:/models" mobilevitv2-serve
FROM python:3.11-slim AS full

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MVIT_HOST=0.0.0.0 \
    MVIT_PORT=8000 \
    MVIT_MODEL_REPOSITORY=/models \
    HF_HOME=/models/.hf-home

# CPU-only torch wheels (amd64 and arm64) from PyTorch's CPU index, before the project.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.1"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install ".[export]"

RUN useradd --system --uid 10001 --create-home mvit && mkdir -p /models && chown mvit /models
USER mvit
VOLUME ["/models"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"MVIT_PORT\", \"8000\")}/health', timeout=2)"

ENTRYPOINT ["mvit", "serve"]
