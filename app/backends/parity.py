"""How close two backends' outputs must be: a float32 tolerance that grows with the outputs' magnitude, and
the decisions (the winning class of each image, pixel or anchor) that must agree wherever they are not ties.

ONNX Runtime and PyTorch sum convolutions and reductions in different orders and fuse different ops, and
float32 addition is not associative: each output carries rounding noise proportional to the magnitude of
what was summed. A fixed absolute bound that passes small demo logits refuses faithful exports of models
whose logits are ten times larger (docs/architecture.md, "Parity gates", derives the bound).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ABSOLUTE = 1e-4  # for outputs near zero
RELATIVE = 1e-4  # of the largest output magnitude


def tolerance(reference: np.ndarray) -> float:
    return ABSOLUTE + RELATIVE * float(np.abs(reference).max(initial=0.0))


def max_difference(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.abs(reference - other).max(initial=0.0))


def class_axis(output: np.ndarray) -> int:
    """Classes are last for (N, C) and (N, anchors, C) outputs, second for (N, C, H, W) maps."""
    return 1 if output.ndim == 4 else -1


def decisions_differ(reference: np.ndarray, other: np.ndarray, margin: float) -> np.ndarray:
    """Where the winning class differs although the reference's top two are more than `margin` apart."""
    axis = class_axis(reference)
    top2 = np.sort(reference, axis=axis).take([-2, -1], axis=axis)
    clear = (top2.take(1, axis=axis) - top2.take(0, axis=axis)) > margin
    return clear & (reference.argmax(axis=axis) != other.argmax(axis=axis))


def decisions_agreeing(reference: np.ndarray, other: np.ndarray) -> float:
    """The share of winning-class decisions (per image for (N, C) logits, per cell for (N, C, H, W) maps)
    that `other` makes as `reference` does, ties included."""
    axis = class_axis(reference)
    return float((reference.argmax(axis=axis) == other.argmax(axis=axis)).mean())


def parity_problems(
    expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], scale: float = 1.0
) -> list[str]:
    """What makes `got` not the same function as `expected`, as messages; empty when it is.

    `scale` widens the tolerance (e.g. for reduced precision); class decisions must agree wherever the
    reference's top two classes are more than twice the tolerance apart.
    """
    problems = []
    for name, reference in expected.items():
        other = got.get(name)
        if other is None or other.shape != reference.shape:
            problems.append(f"{name}: shape {None if other is None else other.shape} != {reference.shape}")
            continue
        allowed = scale * tolerance(reference)
        worst = max_difference(reference, other)
        if not worst <= allowed:
            problems.append(
                f"{name} differs by {worst:.2e} (> {allowed:.2e} for outputs up to "
                f"{float(np.abs(reference).max()):.3g})"
            )
        if name == "logits":
            flipped = int(decisions_differ(reference, other, 2 * allowed).sum())
            if flipped:
                problems.append(f"{name}: {flipped} class decisions differ where they are not ties")
    return problems
