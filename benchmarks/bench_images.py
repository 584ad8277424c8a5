"""Write the bench image sets as JPEG files: the 9 scikit-image photos at 640x480 and at 4032x3024 (12 MP),
quality 90, and at 12 MP encoded like phone photos (grain, quality 92, 2-3 MB).

    python -m benchmarks.bench_images bench-images/
    mvit export models/mobilevitv2-1.0-imagenet1k-256-random --quantize int8 --calibration bench-images/640x480

They also serve as INT8 calibration images for the demo models (real deployments should calibrate on
their own images).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._common import BENCH_SETS, bench_set


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    for name in BENCH_SETS:
        folder = args.directory / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(bench_set(name)):
            (folder / f"photo{i}.jpg").write_bytes(data)
        print(folder)


if __name__ == "__main__":
    main()
