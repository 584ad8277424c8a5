"""CPU per request before the model: decode, resize + crop, and the float pass, stage by stage.

The service's own functions on the bench photos, one thread, as a decode-pool thread runs them
(`app.runtime.pipeline.prepare`): JPEG decode (reduced by DCT scaling where the model allows), the
resize and center crop in uint8, then the float pass (rescale, normalisation, channel flip, CHW layout).
The float pass is what moving preprocessing into the exported graph would take off the decode threads.

    pip install -e ".[bench]"
    python -m benchmarks.bench_intake models/mobilevitv2-1.0-imagenet1k-256-random \\
        models/mobilevitv2-1.0-coco-ssdlite-320-random models/mobilevitv2-1.0-voc-deeplabv3-512-random
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from benchmarks._common import BENCH_SETS, bench_set, command_line


def per_call_ms(call: Callable[[], object], repeats: int) -> float:
    """Median over `repeats` runs of one call, in ms."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return 1000 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "models", nargs="+", help="exported model folders (their preprocessing is what is timed)"
    )
    parser.add_argument("--images", nargs="+", choices=tuple(BENCH_SETS), default=list(BENCH_SETS))
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per photo and stage")
    args = parser.parse_args()

    from app.config import ServerSettings
    from app.cpus import cpu_model
    from app.intake.decode import decode
    from app.intake.preprocess import resize_and_crop, to_model_input
    from app.runtime.models import load_source

    print(f"$ {command_line()}")
    print(f"{time.strftime('%Y-%m-%d')}; {cpu_model()}; one thread; medians over photos of per-photo medians")
    print("| model input | images | decode ms | resize + crop ms | float pass ms | float pass share |")
    print("|---|---|---:|---:|---:|---:|")
    for folder in args.models:
        model = load_source(folder, ServerSettings(models=[folder], backend="onnx", onnx_auto_export=False))
        spec = model.preprocessing
        for image_set in args.images:
            stages: dict[str, list[float]] = {"decode": [], "resize": [], "float": []}
            for body in bench_set(image_set):
                decoded = decode(body, 10**9, model.min_decode_size)
                pixels = resize_and_crop(decoded.image, spec, decoded.size)
                reduce_to = model.min_decode_size
                stages["decode"].append(
                    per_call_ms(lambda b=body, r=reduce_to: decode(b, 10**9, r).image.load(), args.repeats)
                )
                stages["resize"].append(
                    per_call_ms(lambda d=decoded, s=spec: resize_and_crop(d.image, s, d.size), args.repeats)
                )
                stages["float"].append(
                    per_call_ms(lambda p=pixels, s=spec: to_model_input(p, s), args.repeats)
                )
            decode_ms, resize_ms, float_ms = (statistics.median(v) for v in stages.values())
            size = "x".join(map(str, pixels.shape[:2][::-1]))
            share = float_ms / (decode_ms + resize_ms + float_ms)
            print(
                f"| {model.id} ({size}) | {image_set} | {decode_ms:.2f} | {resize_ms:.2f} | {float_ms:.2f} "
                f"| {share:.0%} |"
            )


if __name__ == "__main__":
    main()
