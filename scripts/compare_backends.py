"""How far the ONNX exports are from PyTorch on a folder of images, per runtime and precision (ONNX
Runtime fp32 and INT8; OpenVINO fp32, bf16 and INT8; PyTorch bf16), and top-1 accuracy when the folder
is labelled, under each preprocessing profile (docs/preprocessing.md).

For every image: decode + the model's preprocessing, then each available backend. Reports max
|difference| of the raw outputs against the reference (torch, or onnx fp32 when torch is absent), also
as a share of the export gate's scale-aware tolerance (app/backends/parity.py), and the decisions:
for classifiers, top-1 agreement and max |difference| of softmax probabilities; for segmenters, the share
of label-map cells that agree; for detectors, the detections above 0.5 that agree as sets (same label,
IoU >= 0.5).

An ImageNet-style folder (one subfolder per class) also gives top-1 accuracy per backend. Subfolders are
matched to classes by index ("0", "1", ...), by the label text in config.json, or, when there is one
subfolder per class, in sorted order (the torchvision ImageFolder convention: sorted WordNet ids).

    python -m scripts.bench_images bench-images/
    python -m scripts.compare_backends models/mobilevitv2-1.0-imagenet1k-256-random bench-images/640x480
    python -m scripts.compare_backends models/hub/apple--mobilevitv2-1.0-imagenet1k-256 /data/imagenet/val

The last line settles which preprocessing Apple's weights want: for a labelled folder of a classifier it
also prints top-1 under the `trained` and the `hf` profile side by side (the reference backend).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.intake.decode import IMAGE_SUFFIXES
from scripts._common import command_line

if TYPE_CHECKING:
    from app.runtime.models import ServedModel


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def labelled_images(folder: Path, labels: list[str]) -> list[tuple[Path, int | None]]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        return [(p, None) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    names = [c.name for c in classes]
    if all(n.isdigit() for n in names):
        index = {n: int(n) for n in names}
    elif all(n in labels for n in names):
        index = {n: labels.index(n) for n in names}
    elif len(names) == len(labels):
        index = {n: i for i, n in enumerate(names)}
    else:
        raise SystemExit(
            f"cannot map the {len(names)} subfolders of {folder} to the {len(labels)} classes: name them by "
            "class index or label, or give one per class (sorted order)"
        )
    return [
        (p, index[c.name])
        for c in classes
        for p in sorted(c.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="model folder (with model.onnx, optionally model.int8.onnx)")
    parser.add_argument("images", type=Path, help="folder of images, or of class subfolders of images")
    parser.add_argument("--limit", type=int, help="at most this many images")
    parser.add_argument(
        "--profiles",
        default="trained,hf",
        help="preprocessing profiles to compare top-1 under (labelled classifier folders); '' for none",
    )
    args = parser.parse_args()

    from app.backends.parity import tolerance
    from app.config import Settings
    from app.intake.decode import decode_image
    from app.intake.preprocess import preprocess
    from app.runtime.models import load_model

    print(f"$ {command_line()}")
    candidates = {
        "torch": {"backend": "torch"},
        "torch-bf16": {"backend": "torch", "torch_precision": "bf16"},
    }
    candidates["onnx-fp32"] = {"backend": "onnx"}
    candidates["onnx-int8"] = {"backend": "onnx", "onnx_precision": "int8"}
    candidates["openvino-fp32"] = {"backend": "openvino"}
    candidates["openvino-bf16"] = {"backend": "openvino", "openvino_precision": "bf16"}
    candidates["openvino-int8"] = {"backend": "openvino", "onnx_precision": "int8"}
    models = {}
    for name, options in candidates.items():
        try:
            models[name] = load_model(
                args.model, Settings(models=[args.model], onnx_auto_export=False, **options)
            )
        except Exception as exc:  # a backend that is not installed, or an export that does not exist
            print(f"{name}: not compared ({exc})")
    if not models:
        raise SystemExit("no backend could load the model")
    reference_name = next(iter(models))
    reference = models[reference_name]
    items = labelled_images(args.images, reference.labels)[: args.limit]
    if not items:
        raise SystemExit(f"no images in {args.images}")

    outputs: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in models}
    truth: list[int | None] = []
    for path, label in items:
        batch = preprocess(decode_image(path.read_bytes(), 200_000_000), reference.preprocessing)[None]
        truth.append(label)
        for name, model in models.items():
            for key, value in model.backend.infer(batch).items():
                outputs[name].setdefault(key, []).append(value[0])
    stacked = {name: {k: np.stack(v) for k, v in outs.items()} for name, outs in outputs.items()}

    classifier = reference.task.name == "image-classification"
    labelled = all(t is not None for t in truth)
    print(f"{len(items)} images from {args.images}; reference: {reference_name}")
    for name, outs in stacked.items():
        ref = stacked[reference_name]
        diffs = ", ".join(
            f"{k} {float(np.abs(v - ref[k]).max()):.2e} ({float(np.abs(v - ref[k]).max()) / tolerance(ref[k]):.2f}"
            f" of the parity tolerance {tolerance(ref[k]):.1e})"
            for k, v in outs.items()
        )
        line = f"{name:<10} max |output - {reference_name}|: {diffs}"
        if classifier:
            top1 = outs["logits"].argmax(-1)
            agree = float((top1 == ref["logits"].argmax(-1)).mean())
            prob = float(np.abs(softmax(outs["logits"]) - softmax(ref["logits"])).max())
            line += f"; top-1 agreement {agree:.1%}; max |prob diff| {prob:.2e}"
            if labelled:
                line += f"; top-1 accuracy {float((top1 == np.array(truth)).mean()):.2%}"
        elif reference.task.name == "image-segmentation":
            same = float((outs["logits"].argmax(1) == ref["logits"].argmax(1)).mean())
            line += f"; label-map cells agreeing {same:.2%}"
        else:
            line += "; " + detection_agreement(reference, outs, ref)
        print(line)
    profiles = [p for p in args.profiles.split(",") if p]
    if classifier and labelled and profiles:
        compare_profiles(reference, reference_name, [path for path, _ in items], np.array(truth), profiles)


def detection_agreement(model: ServedModel, outs: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str:
    """Detections above the default threshold, compared as sets with the reference's: a pair agrees when
    it has the same label and IoU >= 0.5 (each detection used once, best score first)."""
    from app.tasks.detection import DEFAULT_THRESHOLD, box_iou

    agreeing = found = expected = 0
    for i in range(len(ref["logits"])):
        mine, theirs = (
            model.detector.detect(o["logits"][i], o["box_regression"][i], DEFAULT_THRESHOLD).above(
                DEFAULT_THRESHOLD
            )
            for o in (outs, ref)
        )
        taken = np.zeros(len(theirs.scores), bool)
        for box, label in zip(mine.boxes, mine.labels, strict=True):
            with np.errstate(divide="ignore", invalid="ignore"):  # NaN (no match) where neither has area
                fits = (box_iou(box, theirs.boxes) >= 0.5) & (theirs.labels == label) & ~taken
            if fits.any():
                taken[np.argmax(fits)] = True
                agreeing += 1
        found, expected = found + len(mine.scores), expected + len(theirs.scores)
    return (
        f"detections above {DEFAULT_THRESHOLD}: {found} (reference {expected}), {agreeing} agreeing "
        f"({agreeing / max(1, found, expected):.1%})"
    )


def compare_profiles(
    model: ServedModel, backend_name: str, paths: list[Path], truth: np.ndarray, profiles: list[str]
) -> None:
    """Top-1 of `model` on `paths` under each preprocessing profile, side by side."""
    from app.intake.decode import decode_image
    from app.intake.preprocess import Preprocessing, preprocess
    from app.intake.profiles import choose

    model_dir = model.model_dir
    hf = Preprocessing.from_hf_config(model_dir.preprocessor_config)
    assert hf.fixed_input_size is not None  # load_model refuses folders without one
    chosen = {
        profile: choose(profile, hf, hf.fixed_input_size, model_dir.task, model_dir.training_pipeline)  # type: ignore[arg-type]
        for profile in profiles
    }
    winners: dict[str, list[int]] = {profile: [] for profile in profiles}
    for path in paths:  # each image decoded once, preprocessed per profile
        image = decode_image(path.read_bytes(), 200_000_000)
        for profile, choice in chosen.items():
            logits = model.backend.infer(preprocess(image, choice.preprocessing)[None])["logits"][0]
            winners[profile].append(int(logits.argmax()))
    predictions = {profile: np.array(found) for profile, found in winners.items()}
    for profile, choice in chosen.items():
        steps = choice.preprocessing.describe()
        print(
            f"profile {profile:<8} ({backend_name}): top-1 accuracy {float((predictions[profile] == truth).mean()):.2%}"
            f"  [{steps['channel_order']}, {steps['resample']}, resize {steps['resize_shortest_edge'] or steps['resize_height_width']}, crop {steps['crop_height_width']}]"
        )
    if len(profiles) == 2:
        first, second = (predictions[p] for p in profiles)
        print(
            f"profiles {profiles[0]} and {profiles[1]} agree on top-1 for {float((first == second).mean()):.2%} of images"
        )


if __name__ == "__main__":
    main()
