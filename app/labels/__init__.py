"""Class names of the datasets MobileViTv2 checkpoints were trained on (public facts, one per line)."""

from __future__ import annotations

from importlib import resources

# coco: the 80 COCO detection categories with "background" at index 0, as ml-cvnets indexes them.
DATASETS = {"imagenet1k": 1000, "voc": 21, "ade20k": 150, "coco": 81}


def read_labels(dataset: str) -> list[str]:
    text = resources.files("app.labels").joinpath(f"{dataset}.txt").read_text(encoding="utf-8")
    return text.splitlines()


def labels_for(num_classes: int) -> tuple[str, list[str]]:
    """The dataset with that many classes and its names; generic names when none matches."""
    for dataset, count in DATASETS.items():
        if count == num_classes:
            return dataset, read_labels(dataset)
    return f"{num_classes}-classes", [f"LABEL_{i}" for i in range(num_classes)]
