"""Write the bench image set as JPEG files: the 9 scikit-image photos at 640x480 and at 4032x3024 (12 MP).

    python scripts/bench_images.py bench-images/
    mvit export models/mobilevitv2-1.0-imagenet1k-256-random --quantize int8 --calibration bench-images/640x480

They also serve as INT8 calibration images for the demo models (real deployments should calibrate on
their own images).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import bench_photos, jpeg

SIZES = ((640, 480), (4032, 3024))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    for width, height in SIZES:
        folder = args.directory / f"{width}x{height}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, photo in enumerate(bench_photos(width, height)):
            (folder / f"photo{i}.jpg").write_bytes(jpeg(photo))
        print(folder)


if __name__ == "__main__":
    main()
