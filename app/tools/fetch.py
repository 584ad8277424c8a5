"""`mvit fetch`: pretrained MobileViTv2 weights into the model repository, verified, written atomically.

Two sources:
- the Hugging Face Hub (`apple/mobilevitv2-1.0-imagenet1k-256`, `apple/mobilevitv2-1.0-voc-deeplabv3`),
  into `models/hub/<org>--<name>/`, at a pinned revision that `--hub-revision` overrides (app/repository/hub.py);
- Apple's ml-cvnets model zoo (every other width, the 384-px classifiers, the SSDLite detectors,
  DeepLabV3 on ADE20K), downloaded and converted (`app/tools/convert.py`) into `models/cvnets-.../`.

A model counts as fetched only after its weights load strictly into the network its config describes
(every key present, every shape right); until then it lives in a hidden partial folder that is renamed
into place at the end, so an interrupted fetch never leaves a half model. Needs torch (the full install).
"""

from __future__ import annotations

import logging
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app.backends import verify_with_torch
from app.errors import CheckpointError
from app.repository.hub import check_reachable, fetch_from_hub, move_into_place, partial_folder

log = logging.getLogger(__name__)

# Apple's ml-cvnets model zoo (docs/source/en/general/README-model-zoo.md in apple/ml-cvnets).
CVNETS = "https://docs-assets.developer.apple.com/ml-research/models/cvnets-v2"
WIDTHS = ("0.5", "0.75", "1.0", "1.25", "1.5", "1.75", "2.0")
DEFAULT_MODELS = (
    "apple/mobilevitv2-1.0-imagenet1k-256",
    "apple/mobilevitv2-1.0-voc-deeplabv3",
    "coco-ssd-mobilevitv2-1.0",
)


@dataclass(frozen=True)
class CvnetsCheckpoint:
    name: str
    url: str
    image_size: int | None = None  # None: the converter's default for the task
    folder: str | None = None  # None: the converter's name (cvnets-mobilevitv2-<width>-<dataset>-<kind>)


def cvnets_catalog() -> dict[str, CvnetsCheckpoint]:
    """Names `mvit fetch` knows in Apple's ml-cvnets model zoo."""
    catalog: dict[str, CvnetsCheckpoint] = {}

    def add(name: str, path: str, image_size: int | None = None, folder: str | None = None) -> None:
        catalog[name] = CvnetsCheckpoint(name, f"{CVNETS}/{path}", image_size, folder)

    for w in WIDTHS:
        add(
            f"mobilevitv2-{w}-imagenet1k-256",
            f"classification/mobilevitv2/imagenet1k/256x256/mobilevitv2-{w}.pt",
        )
        add(
            f"mobilevitv2-{w}-imagenet1k-384",
            f"classification/mobilevitv2/imagenet1k/384x384/mobilevitv2-{w}.pt",
            image_size=384,
        )
        add(f"coco-ssd-mobilevitv2-{w}", f"detection/mobilevitv2/coco-ssd-mobilevitv2-{w}.pt")
        add(
            f"deeplabv3-mobilevitv2-{w}-ade20k",
            f"segmentation/ade20k/mobilevitv2/deeplabv3-mobilevitv2-{w}.pt",
        )
    for w in ("0.5", "1.0", "1.25", "1.5"):  # the only VOC DeepLabV3 widths published
        add(
            f"deeplabv3-mobilevitv2-{w}-voc",
            f"segmentation/pascalvoc/mobilevitv2/deeplabv3-mobilevitv2-{w}.pt",
        )
    for w in ("1.5", "1.75", "2.0"):  # pre-trained on ImageNet-21k, fine-tuned on 1k
        for size in (256, 384):
            add(
                f"mobilevitv2-{w}-imagenet21k-to-1k-{size}",
                f"classification/mobilevitv2/imagenet21k_to_1k/{size}x{size}/mobilevitv2-{w}.pt",
                image_size=size,
                folder=f"cvnets-mobilevitv2-{w}-imagenet21k-to-1k-{size}",  # 1k labels, like the 1k models
            )
    return catalog


def _download(url: str, destination: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "mobilevitv2-serve (mvit fetch)"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, destination.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if total and sys.stderr.isatty():
                    print(f"\r  {done / 1e6:.0f} / {total / 1e6:.0f} MB", end="", file=sys.stderr)
        if total and done != total:
            raise CheckpointError(f"download of {url} stopped at {done} of {total} bytes")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckpointError(
            f"could not download {url} ({reason}). Check the network, or download the file elsewhere "
            "and run `mvit convert FILE models/`"
        ) from None


def fetch_cvnets(checkpoint: CvnetsCheckpoint, repository: Path) -> Path:
    from app.tools.convert import convert_cvnets_checkpoint

    with partial_folder(repository / checkpoint.name) as partial:
        weights = partial / Path(checkpoint.url).name
        log.info("downloading %s", checkpoint.url)
        _download(checkpoint.url, weights)
        converted = convert_cvnets_checkpoint(
            weights,
            partial / "converted",
            checkpoint.image_size,
            name=checkpoint.folder,
            source=checkpoint.url,
        )
        verify_with_torch(converted)
        target = repository / converted.name
        move_into_place(converted, target)
    return target


def fetch(name: str, repository: Path, hub_revision: str | None = None) -> Path:
    """Fetch one model by name (see `cvnets_catalog`) or Hub id; returns its folder."""
    repository.mkdir(parents=True, exist_ok=True)
    catalog = cvnets_catalog()
    if name in catalog:
        check_reachable(catalog[name].url)
        return fetch_cvnets(catalog[name], repository)
    if "/" in name:
        return fetch_from_hub(name, repository, hub_revision, verify=verify_with_torch)
    known = ", ".join(sorted(catalog))
    raise CheckpointError(f"unknown model {name!r}: give a Hub id (org/name) or one of: {known}")
