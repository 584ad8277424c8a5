"""`mvit compare`: how far a model's other backends and precisions are from its reference on a folder of
images (ONNX Runtime fp32 and INT8; OpenVINO fp32, bf16 and INT8; PyTorch bf16), and top-1 accuracy when
the folder is labelled, under each preprocessing profile (docs/preprocessing.md).

For every image: decode + the model's preprocessing, then each backend that loads (the first of them, in
the order of BACKENDS, is the reference: torch, or onnx-fp32 without torch). Reports max |difference| of
the raw outputs against the reference, also as a share of the export gate's scale-aware tolerance
(app/backends/parity.py), and the decisions: for classifiers, top-1 agreement and max |difference| of
softmax probabilities; for segmenters, the share of label-map cells that agree; for detectors, the
detections above 0.5 that agree as sets (same label, IoU >= 0.5).

An ImageNet-style folder (one subfolder per class) also gives top-1 accuracy per backend. Subfolders are
matched to classes by index ("0", "1", ...), by the label text in config.json, or, when there is one
subfolder per class, in sorted order (the torchvision ImageFolder convention: sorted WordNet ids). For a
labelled folder of a classifier it also prints top-1 under each preprocessing profile side by side (the
reference backend): that settles which preprocessing a checkpoint wants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from app.intake.decode import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from app.intake.preprocess import Preprocessing
    from app.runtime.models import ServedModel
    from app.tasks.detection import Detector

# Every backend and precision compared, by the name its line of the report carries; the settings that load it.
BACKENDS: dict[str, dict[str, str]] = {
    "torch": {"backend": "torch"},
    "torch-bf16": {"backend": "torch", "torch_precision": "bf16"},
    "onnx-fp32": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx", "onnx_precision": "int8"},
    "openvino-fp32": {"backend": "openvino"},
    "openvino-bf16": {"backend": "openvino", "openvino_precision": "bf16"},
    "openvino-int8": {"backend": "openvino", "onnx_precision": "int8"},
}
MAX_IMAGE_PIXELS = 200_000_000


class CompareError(Exception):
    """Nothing to compare: no backend loads the model, or the folder has no images it can use."""


class DetectionAgreement(NamedTuple):
    found: int  # detections above the threshold
    expected: int  # the reference's
    agreeing: int

    def __str__(self) -> str:
        from app.tasks.detection import DEFAULT_THRESHOLD

        share = self.agreeing / max(1, self.found, self.expected)
        return (
            f"detections above {DEFAULT_THRESHOLD}: {self.found} (reference {self.expected}), "
            f"{self.agreeing} agreeing ({share:.1%})"
        )


def labelled_images(folder: Path, labels: list[str]) -> list[tuple[Path, int | None]]:
    """The images of `folder`, each with its class index when the folder has one subfolder per class."""
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
        raise CompareError(
            f"cannot map the {len(names)} subfolders of {folder} to the {len(labels)} classes: name them by "
            "class index or label, or give one per class (sorted order)"
        )
    return [
        (p, index[c.name])
        for c in classes
        for p in sorted(c.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]


def detection_agreement(
    detector: Detector, outs: dict[str, np.ndarray], ref: dict[str, np.ndarray]
) -> DetectionAgreement:
    """Detections above the default threshold, compared as sets with the reference's: a pair agrees when
    it has the same label and IoU >= 0.5 (each detection used once, best score first)."""
    from app.tasks.detection import DEFAULT_THRESHOLD, box_iou

    agreeing = found = expected = 0
    for i in range(len(ref["logits"])):
        mine, theirs = (
            detector.answer(o["logits"][i], o["box_regression"][i], DEFAULT_THRESHOLD) for o in (outs, ref)
        )
        taken = np.zeros(len(theirs.scores), bool)
        for box, label in zip(mine.boxes, mine.labels, strict=True):
            with np.errstate(divide="ignore", invalid="ignore"):  # NaN (no match) where neither has area
                fits = (box_iou(box, theirs.boxes) >= 0.5) & (theirs.labels == label) & ~taken
            if fits.any():
                taken[np.argmax(fits)] = True
                agreeing += 1
        found, expected = found + len(mine.scores), expected + len(theirs.scores)
    return DetectionAgreement(found, expected, agreeing)


def compare(
    model: str,
    images: Path,
    backends: Sequence[str] = tuple(BACKENDS),
    limit: int | None = None,
    profiles: Sequence[str] = ("trained", "hf"),
    out: Callable[[str], None] = print,
) -> None:
    """Run every image of `images` through each of `backends` that loads `model`; `out` gets the report,
    one line per backend (and per profile, for a labelled folder of a classifier)."""
    from app.config import ServerSettings
    from app.repository import resolve
    from app.runtime.models import load_model

    settings = ServerSettings(models=[model], onnx_auto_export=False)
    model_dir = resolve(model, settings.model_repository)  # a folder that is not one: one error
    options = settings.model_options()
    models = {}
    for name in (name for name in BACKENDS if name in backends):
        try:
            models[name] = load_model(model_dir, options.model_copy(update=BACKENDS[name]))
        except Exception as exc:  # a backend that is not installed, or an export that does not exist
            out(f"{name}: not compared ({exc})")
    if not models:
        raise CompareError("no backend could load the model")
    reference_name = next(iter(models))
    reference = models[reference_name]
    items = labelled_images(images, reference.labels)[:limit]
    if not items:
        raise CompareError(f"no images in {images}")
    paths, truth = [path for path, _ in items], [label for _, label in items]
    outputs = infer_all(models, paths, reference.preprocessing)
    out(f"{len(items)} images from {images}; reference: {reference_name}")
    for line in comparison_lines(reference, reference_name, outputs, truth):
        out(line)
    if reference.task.name == "image-classification" and None not in truth and profiles:
        for line in profile_lines(reference, reference_name, paths, np.array(truth), profiles):
            out(line)


def infer_all(
    models: dict[str, ServedModel], paths: list[Path], preprocessing: Preprocessing
) -> dict[str, dict[str, np.ndarray]]:
    """Each backend's outputs on every image, all fed the same tensors, stacked: backend -> output name ->
    (images, ...)."""
    from app.intake.decode import decode_image
    from app.intake.preprocess import preprocess

    outputs: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in models}
    for path in paths:
        batch = preprocess(decode_image(path.read_bytes(), MAX_IMAGE_PIXELS), preprocessing)[None]
        for name, model in models.items():
            for key, value in model.backend.infer(batch).items():
                outputs[name].setdefault(key, []).append(value[0])
    return {name: {k: np.stack(v) for k, v in outs.items()} for name, outs in outputs.items()}


def comparison_lines(
    reference: ServedModel,
    reference_name: str,
    outputs: dict[str, dict[str, np.ndarray]],
    truth: list[int | None],
) -> Iterator[str]:
    """One line per backend: how far its outputs and decisions are from the reference's."""
    from app.backends.parity import decisions_agreeing, max_difference, tolerance
    from app.tasks.detection import softmax

    ref = outputs[reference_name]
    task = reference.task.name
    for name, outs in outputs.items():
        diffs = ", ".join(
            f"{k} {max_difference(ref[k], v):.2e} ({max_difference(ref[k], v) / tolerance(ref[k]):.2f}"
            f" of the parity tolerance {tolerance(ref[k]):.1e})"
            for k, v in outs.items()
        )
        line = f"{name:<10} max |output - {reference_name}|: {diffs}"
        if task == "image-classification":
            prob = max_difference(softmax(ref["logits"]), softmax(outs["logits"]))
            line += f"; top-1 agreement {decisions_agreeing(ref['logits'], outs['logits']):.1%}"
            line += f"; max |prob diff| {prob:.2e}"
            if None not in truth:
                top1 = outs["logits"].argmax(-1)
                line += f"; top-1 accuracy {float((top1 == np.array(truth)).mean()):.2%}"
        elif task == "image-segmentation":
            line += f"; label-map cells agreeing {decisions_agreeing(ref['logits'], outs['logits']):.2%}"
        else:
            line += f"; {detection_agreement(reference.detector, outs, ref)}"
        yield line


def profile_lines(
    model: ServedModel, backend_name: str, paths: list[Path], truth: np.ndarray, profiles: Sequence[str]
) -> Iterator[str]:
    """Top-1 of `model` on `paths` under each preprocessing profile, side by side."""
    from app.intake.decode import decode_image
    from app.intake.preprocess import preprocess
    from app.runtime.models import preprocessing_for

    chosen = {profile: preprocessing_for(model.model_dir, profile) for profile in profiles}  # type: ignore[arg-type]
    winners: dict[str, list[int]] = {profile: [] for profile in profiles}
    for path in paths:  # each image decoded once, preprocessed per profile
        image = decode_image(path.read_bytes(), MAX_IMAGE_PIXELS)
        for profile, choice in chosen.items():
            logits = model.backend.infer(preprocess(image, choice.preprocessing)[None])["logits"][0]
            winners[profile].append(int(logits.argmax()))
    predictions = {profile: np.array(found) for profile, found in winners.items()}
    for profile, choice in chosen.items():
        steps = choice.preprocessing.describe()
        yield (
            f"profile {profile:<8} ({backend_name}): top-1 accuracy {float((predictions[profile] == truth).mean()):.2%}"
            f"  [{steps['channel_order']}, {steps['resample']}, resize {steps['resize_shortest_edge'] or steps['resize_height_width']}, crop {steps['crop_height_width']}]"
        )
    if len(profiles) == 2:
        first, second = (predictions[p] for p in profiles)
        yield f"profiles {profiles[0]} and {profiles[1]} agree on top-1 for {float((first == second).mean()):.2%} of images"
