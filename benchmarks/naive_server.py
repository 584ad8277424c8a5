"""The baseline for benchmarks/bench.py: the image-classification server most people write first.

FastAPI + `transformers.pipeline("image-classification")` over the same checkpoint, PyTorch on CPU,
one image per call. Not part of the service.

    python -m benchmarks.naive_server MODEL_FOLDER --port 8001
"""

from __future__ import annotations

import argparse
import io

import uvicorn
from fastapi import FastAPI, Request
from PIL import Image
from transformers import pipeline

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--port", type=int, default=8001)
args = parser.parse_args()

classifier = pipeline("image-classification", model=args.model)
app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/classify")
async def classify(request: Request) -> list[dict]:
    image = Image.open(io.BytesIO(await request.body())).convert("RGB")
    return classifier(image)


uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
