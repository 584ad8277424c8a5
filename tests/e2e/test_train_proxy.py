"""benchmarks/train_proxy.py at a tiny size: it trains, is deterministic, and writes a folder that serves.
(Its real run, ~4 minutes, is in docs/performance.md; CI spends seconds here.)"""

from __future__ import annotations

import json
from pathlib import Path

from app.runtime.pipeline import predict
from benchmarks.train_proxy import CLASSES, draw_example
from tests.support import encode, load_served, run_benchmark


def train(out: Path) -> Path:
    result = run_benchmark(
        "train_proxy",
        str(out),
        "--train-images",
        "128",
        "--held-out-images",
        "40",
        "--epochs",
        "1",
        "--batch-size",
        "32",
    )
    assert "held-out top-1" in result.stdout
    return out / "proxy-mobilevitv2-0.5-shapes-64"


def test_the_proxy_trains_deterministically_and_serves(tmp_path: Path) -> None:
    folder = train(tmp_path / "a")
    again = train(tmp_path / "b")
    assert (folder / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["random_weights"] is False and 0 <= manifest["held_out_top1"] <= 1
    model = load_served(folder)
    image, label = draw_example(7, 64)
    answer = predict(model, encode(image, "PNG"), {"top_k": 3}, 10**8)
    assert len(answer) == 3 and {entry["label"] for entry in answer} <= set(CLASSES)
    assert label == 7 % len(CLASSES)  # image i is of class i mod 10
