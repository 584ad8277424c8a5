"""A trained proxy model: MobileViTv2 trained on a procedural image task, the only accuracy evidence available
without real checkpoints (no ImageNet, no Hub here).

Ten classes of shapes and textures (circle, square, triangle, cross, ring, horizontal, vertical and
diagonal stripes, checkerboard, dots), each drawn at a random place and size, in random colours on a
random smooth background with noise; every image is a function of its index, so the run is
deterministic. It writes a model folder in the service's format (it serves like any model), then prints
held-out top-1. With `--quantize`, it also exports to ONNX, quantizes to INT8 on training images, and
prints held-out top-1 for torch, ONNX fp32 and ONNX INT8 (`mvit compare` on a labelled folder of
held-out images).

    python -m benchmarks.train_proxy models/ --quantize
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks._common import command_line
from benchmarks._proxy import (
    deterministic_torch,
    export_int8,
    parse_proxy_arguments,
    proxy_parser,
    train,
    trained_size,
    write_proxy,
)

CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "dots",
)
TRAIN_SEED, HELD_OUT_SEED = 0, 1_000_000  # image i of a split is drawn from seed + i


def draw_example(index: int, size: int) -> tuple[Image.Image, int]:
    """Image `index` (any non-negative integer) and its class."""
    rng = np.random.default_rng(index)
    label = index % len(CLASSES)
    field = (rng.random((3, 3, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(field, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    extent = int(rng.integers(size * 4 // 10, size * 8 // 10))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent + 1, 2))
    x1, y1 = x0 + extent, y0 + extent
    line = max(2, extent // 8)
    kind = CLASSES[label]
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif kind == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=color)
    elif kind == "cross":
        middle_x, middle_y = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((middle_x - line, y0, middle_x + line, y1), fill=color)
        draw.rectangle((x0, middle_y - line, x1, middle_y + line), fill=color)
    elif kind == "ring":
        draw.ellipse((x0, y0, x1, y1), outline=color, width=line)
    elif kind == "horizontal stripes":
        for y in range(y0, y1, 2 * line):
            draw.rectangle((x0, y, x1, y + line - 1), fill=color)
    elif kind == "vertical stripes":
        for x in range(x0, x1, 2 * line):
            draw.rectangle((x, y0, x + line - 1, y1), fill=color)
    elif kind == "diagonal stripes":
        for offset in range(-extent, extent, 2 * line):
            draw.line((x0 + offset, y0, x0 + offset + extent, y1), fill=color, width=line)
    elif kind == "checkerboard":
        for y in range(y0, y1, line):
            for x in range(x0, x1, line):
                if ((x - x0) // line + (y - y0) // line) % 2 == 0:
                    draw.rectangle((x, y, x + line - 1, y + line - 1), fill=color)
    else:  # dots
        for y in range(y0 + line, y1, 3 * line):
            for x in range(x0 + line, x1, 3 * line):
                draw.ellipse(
                    (x - line // 2 - 1, y - line // 2 - 1, x + line // 2 + 1, y + line // 2 + 1), fill=color
                )
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), label


def tensors(first: int, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*(draw_example(first + i, size) for i in range(count)), strict=True)
    pixels = np.stack([np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255 for image in images])
    return pixels, np.array(labels)


def main() -> None:
    parser = proxy_parser(__doc__.split("\n\n")[0], image_size=64)
    parser.add_argument("--train-images", type=int, default=8_000)
    parser.add_argument("--held-out-images", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parse_proxy_arguments(parser)
    if args.evaluate is not None:
        compare_precisions(args.evaluate, args.held_out_images, trained_size(args.evaluate), args.quantizer)
        return

    import torch

    from app.nn.build import create_network
    from app.nn.configs import ARCHITECTURE_BY_TASK
    from app.repository.writer import hf_config

    print(f"$ {command_line()}")
    deterministic_torch(args.threads)
    size = args.image_size
    architecture = ARCHITECTURE_BY_TASK["image-classification"]
    config = hf_config(args.width, size, list(CLASSES), architecture.name)
    model = create_network(architecture, config, len(CLASSES))

    started = time.perf_counter()
    train_x, train_y = tensors(TRAIN_SEED, args.train_images, size)
    held_x, held_y = tensors(HELD_OUT_SEED, args.held_out_images, size)
    print(
        f"data: {len(train_y)} training and {len(held_y)} held-out images, {time.perf_counter() - started:.0f} s"
    )

    steps_per_epoch = max(1, len(train_y) // args.batch_size)
    order = np.random.default_rng(0)
    permutations: list[np.ndarray] = []  # one per epoch
    losses: list[float] = []  # this epoch's

    def loss_of(step: int) -> torch.Tensor:
        epoch_step = step % steps_per_epoch
        if epoch_step == 0:
            permutations.append(order.permutation(len(train_y)))
            losses.clear()
        batch = permutations[-1][epoch_step * args.batch_size : (epoch_step + 1) * args.batch_size]
        x, y = torch.from_numpy(train_x[batch]), torch.from_numpy(train_y[batch])
        if order.random() < 0.5:
            x = x.flip(-1)  # a mirrored shape is the same class
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        losses.append(loss.item())
        return loss

    def after_step(step: int) -> None:
        if (step + 1) % steps_per_epoch == 0:
            accuracy = top1(model, held_x, held_y)
            print(
                f"epoch {(step + 1) // steps_per_epoch}: loss {np.mean(losses):.3f}, held-out top-1 {accuracy:.1%}, {time.perf_counter() - started:.0f} s"
            )

    train(model, loss_of, args.epochs * steps_per_epoch, 2e-3, 0.15, after_step)

    model.eval()
    held_out_top1 = round(top1(model, held_x, held_y), 4)
    folder = write_proxy(
        args.directory,
        f"proxy-mobilevitv2-{args.width}-shapes-{size}",
        architecture.task,
        config,
        model.state_dict(),
        "train_proxy",
        f"{len(CLASSES)} procedural shape and texture classes (benchmarks/train_proxy.py)",
        {"held_out_top1": held_out_top1},
    )
    print(
        f"{folder}: held-out top-1 {held_out_top1:.1%} (torch), {time.perf_counter() - started:.0f} s in all"
    )
    if args.quantize:
        compare_precisions(folder, args.held_out_images, size, args.quantizer)


def top1(model: object, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    model.eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        predicted = np.concatenate(
            [
                model(torch.from_numpy(chunk)).argmax(-1).numpy()
                for chunk in np.array_split(x, max(1, len(x) // 256))
            ]
        )  # type: ignore[operator]
    return float((predicted == y).mean())


def compare_precisions(folder: Path, held_out: int, size: int, quantizer: str = "onnxruntime") -> None:
    """Export, quantize on 100 training images, and report held-out top-1 per backend and precision."""
    data = folder.with_name(f"{folder.name}-images")  # beside the model folder, not in it
    images, calibration = data / "held-out", data / "calibration"
    for i in range(held_out):
        image, label = draw_example(HELD_OUT_SEED + i, size)
        (images / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        image.save(images / CLASSES[label] / f"{i}.png")
    calibration.mkdir(exist_ok=True)
    for i in range(100):
        draw_example(TRAIN_SEED + i, size)[0].save(calibration / f"{i}.png")
    export_int8(folder, calibration, quantizer)
    subprocess.run([sys.executable, "-m", "app.cli", "compare", str(folder), str(images)], check=True)


if __name__ == "__main__":
    main()
