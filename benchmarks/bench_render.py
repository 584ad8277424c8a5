"""Time of the annotated-image answers (`render=png|jpeg`) on a 12 MP photo, per task and format.

    python -m benchmarks.bench_render models/mobilevitv2-1.0-imagenet1k-256-random \
        models/mobilevitv2-1.0-voc-deeplabv3-512-random models/mobilevitv2-1.0-coco-ssdlite-320-random

Runs the app in-process and reads the `render` phase of each answer's Server-Timing header: decoding the
photo again at the render size, drawing, and encoding. Medians of --rounds answers after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks._common import command_line

ROUTES = {
    "image-classification": "/classify",
    "image-segmentation": "/segment",
    "object-detection": "/detect",
}


def phase_ms(server_timing: str, phase: str) -> float:
    for part in server_timing.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name == phase:
            return float(duration)
    raise KeyError(phase)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="model folders (one per task)")
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-side", type=int, default=1600, help="render_max_side (0: full size)")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from app.config import ServerSettings
    from benchmarks._common import photo_jpeg

    print(f"$ {command_line()}")
    photo = photo_jpeg(4032, 3024)
    print(
        f"{time.strftime('%Y-%m-%d')}; 12 MP JPEG (4032x3024, {len(photo) / 1e6:.1f} MB), render_max_side {args.max_side}"
    )
    settings = ServerSettings(models=args.models, backend=args.backend, render_max_side=args.max_side)
    with TestClient(create_app(settings)) as client:
        while client.app.state.manager.loading:  # type: ignore[attr-defined]
            time.sleep(0.1)
        print(f"{'route':10s} {'format':6s} {'render ms':>10s} {'whole request ms':>17s} {'bytes':>10s}")
        for model in client.get("/models").json():
            route = ROUTES[model["task"]]
            for fmt in ("png", "jpeg"):
                renders, totals, size = [], [], 0
                for n in range(args.rounds + 1):
                    started = time.perf_counter()
                    answer = client.post(route, content=photo, params={"render": fmt})
                    answer.raise_for_status()
                    if n:  # the first is a warm-up
                        totals.append((time.perf_counter() - started) * 1000)
                        renders.append(phase_ms(answer.headers["server-timing"], "render"))
                        size = len(answer.content)
                print(
                    f"{route:10s} {fmt:6s} {statistics.median(renders):10.1f} "
                    f"{statistics.median(totals):17.1f} {size:10,d}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
