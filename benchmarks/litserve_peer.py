"""The peer for benchmarks/bench.py: the same /classify service as a user would build it with LitServe.

LitServe's dynamic batching (up to 8 requests, 5 ms window) over one ONNX Runtime session on the model
folder's model.onnx, Hugging Face JSON in (`{"inputs": base64, "parameters": {"top_k": k}}`) and out.
Preprocessing follows the folder's preprocessor_config.json with PIL and NumPy, as a user reading the
config would write it. Not part of the service.

    pip install -e ".[bench]"
    python -m benchmarks.litserve_peer MODEL_FOLDER --port 8002
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time to
# parse the body as JSON.
import argparse
import base64
import io
import json
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort
from PIL import Image


class Classifier(ls.LitAPI):
    def __init__(self, folder: Path) -> None:
        super().__init__(max_batch_size=8, batch_timeout=0.005, api_path="/classify")
        self.folder = folder

    def setup(self, device: str) -> None:
        self.session = ort.InferenceSession(
            str(self.folder / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        config = json.loads((self.folder / "preprocessor_config.json").read_text())
        size = config["size"]
        self.short_side = size["shortest_edge"] if isinstance(size, dict) else size
        crop = config["crop_size"]
        self.crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        self.flip = config.get("do_flip_channel_order", True)
        self.resample = config.get("resample", 2)
        labels = json.loads((self.folder / "config.json").read_text())["id2label"]
        self.labels = [labels[str(i)] for i in range(len(labels))]

    def decode_request(self, request: dict[str, Any]) -> tuple[np.ndarray, int]:
        image = Image.open(io.BytesIO(base64.b64decode(request["inputs"]))).convert("RGB")
        scale = self.short_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), self.resample)
        top, left = (image.height - self.crop[0]) // 2, (image.width - self.crop[1]) // 2
        pixels = (
            np.asarray(image.crop((left, top, left + self.crop[1], top + self.crop[0])), np.float32) / 255
        )
        pixels = pixels.transpose(2, 0, 1)
        top_k = int((request.get("parameters") or {}).get("top_k", 5))
        return np.ascontiguousarray(pixels[::-1] if self.flip else pixels), top_k

    def batch(self, inputs: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, list[int]]:
        return np.stack([pixels for pixels, _ in inputs]), [k for _, k in inputs]

    def predict(self, batch: tuple[np.ndarray, list[int]]) -> list[tuple[np.ndarray, int]]:
        pixels, top_ks = batch
        logits = self.session.run(None, {self.session.get_inputs()[0].name: pixels})[0]
        return list(zip(logits, top_ks, strict=True))

    def unbatch(self, output: list[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, int]]:
        return output

    def encode_response(self, output: tuple[np.ndarray, int]) -> list[dict[str, Any]]:
        logits, top_k = output
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[:top_k]
        return [{"label": self.labels[i], "score": float(probabilities[i])} for i in best]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    server = ls.LitServer(Classifier(args.model), accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
