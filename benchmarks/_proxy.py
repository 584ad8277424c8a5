"""What the trained proxies (benchmarks/train_proxy.py, benchmarks/train_proxy_detector.py) share: their command
line, the deterministic torch set-up, the training loop, the model folder they write, and the INT8 export
they evaluate."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.backends.onnx_files import QUANTIZERS

if TYPE_CHECKING:
    import torch


def proxy_parser(description: str, image_size: int) -> argparse.ArgumentParser:
    """The arguments both proxies take; each adds its own training ones."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "directory", type=Path, nargs="?", help="where to write the model folder, e.g. models/"
    )
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--image-size", type=int, default=image_size, help="a multiple of 32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quantize", action="store_true", help="also evaluate every backend and precision")
    parser.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default="onnxruntime",
        help="with --quantize: who writes model.int8.onnx (`mvit export --quantizer`)",
    )
    parser.add_argument(
        "--evaluate",
        type=Path,
        metavar="FOLDER",
        help="instead of training: quantize this proxy folder, written earlier by this script, and evaluate "
        "it on every backend and precision",
    )
    return parser


def parse_proxy_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if (args.directory is None) == (args.evaluate is None):
        parser.error("give a directory to train into, or --evaluate FOLDER")
    return args


def trained_size(folder: Path) -> int:
    """The input size a proxy folder was trained at."""
    return int(json.loads((folder / "config.json").read_text())["image_size"])


def deterministic_torch(threads: int) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train(
    model: torch.nn.Module,
    loss_of: Callable[[int], torch.Tensor],
    steps: int,
    max_lr: float,
    warm_up: float,
    after_step: Callable[[int], None],
) -> None:
    """`steps` steps of AdamW (weight decay 0.05) under a one-cycle learning rate that peaks at `max_lr`
    after the `warm_up` share of the steps. `loss_of(step)` is that step's loss, computed in training mode;
    `after_step(step)` reports, and may evaluate the model."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=steps, pct_start=warm_up
    )
    for step in range(steps):
        model.train()  # again after an evaluation
        loss = loss_of(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        after_step(step)


def write_proxy(
    directory: Path,
    name: str,
    task: str,
    config: dict[str, Any],
    state_dict: dict[str, Any],
    script: str,
    trained_on: str,
    held_out: dict[str, Any],
) -> Path:
    """The trained network as a model folder that serves like any other."""
    from app.intake.preprocess import Preprocessing
    from app.repository.writer import write_model_folder

    size = config["image_size"]
    preprocessing = Preprocessing(resize_height_width=(size, size), resample=2, bgr=False)
    manifest = {
        "id": name,
        "task": task,
        "random_weights": False,
        "trained_on": trained_on,
        **held_out,
        "generated_by": f"python -m benchmarks.{script}",
        # Trained on exactly what preprocessor_config.json gives, so that is its trained preprocessing.
        "training_pipeline": f"benchmarks/{script}.py",
        "preprocessing_profile": "hf",
    }
    return write_model_folder(directory / name, config, preprocessing.to_hf_config(), manifest, state_dict)


def export_int8(folder: Path, calibration: Path, quantizer: str) -> None:
    """`mvit export FOLDER --quantize int8` on the proxy's calibration images."""
    command = [sys.executable, "-m", "app.cli", "export", str(folder), "--quantize", "int8"]
    command += ["--calibration", str(calibration), "--quantizer", quantizer]
    subprocess.run(command, check=True)
