"""Segmentation post-processing time (`app.tasks.segmentation.segment`: label map, then one PNG mask per
class) on a model's real logits for the bench photos, with the service's mask encoder and, for
comparison, Pillow's PNG at zlib level 1 (what the service used before). Interleaved rounds, medians.

    pip install -e ".[bench]"
    python -m benchmarks.bench_segmentation_postprocess models/mobilevitv2-1.0-voc-deeplabv3-512-random
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from unittest import mock

import numpy as np

from app.config import ServerSettings
from app.cpus import cpu_model
from app.runtime.models import load_source
from app.runtime.pipeline import prepare
from app.tasks import segmentation
from benchmarks._common import BENCH_SETS, bench_set, command_line, pillow_png


def pillow_png_base64(mask: np.ndarray) -> str:
    return base64.b64encode(pillow_png(mask)).decode("ascii")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a segmentation model folder")
    parser.add_argument("--images", nargs="+", choices=tuple(BENCH_SETS), default=["640x480", "12MP"])
    parser.add_argument("--photos", type=int, default=9, help="bench photos per set (at most 9)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    model = load_source(args.model, ServerSettings(models=[args.model], backend="onnx"))
    encoders = {"Pillow, zlib level 1": pillow_png_base64, "the service's encoder": segmentation.encode_png}
    print(f"$ {command_line()}")
    print(f"{time.strftime('%Y-%m-%d')}; {cpu_model()}; one thread")
    print(f"| photos | masks per photo | {' | '.join(f'{name}, ms per photo' for name in encoders)} |")
    print(f"|---|---:|{'---:|' * len(encoders)}")
    for image_set in args.images:
        cases = []
        for body in bench_set(image_set)[: args.photos]:
            prepared = prepare(model, body, 10**9)
            logits = model.backend.infer(prepared.tensor[None])["logits"][0]
            cases.append((logits, prepared.size))
        times: dict[str, list[float]] = {name: [] for name in encoders}
        masks = 0
        for _ in range(args.rounds):
            for name, encoder in encoders.items():
                with mock.patch.object(segmentation, "encode_png", encoder):
                    started = time.perf_counter()
                    masks = sum(
                        len(segmentation.segment(x, size, model.labels, model.upsample_align_corners))
                        for x, size in cases
                    )
                    times[name].append(1000 * (time.perf_counter() - started) / len(cases))
        figures = " | ".join(
            f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for v in times.values()
        )
        print(f"| {image_set} | {masks / len(cases):.1f} | {figures} |")


if __name__ == "__main__":
    main()
