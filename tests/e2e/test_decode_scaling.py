"""benchmarks/bench_decode_scaling.py: its process pools deliver the tensors a decode thread computes
(through a pipe and through shared memory), it refuses to time one that does not, and every way of
running the decoding is measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ServerSettings
from app.runtime.models import load_source
from benchmarks.bench_decode_scaling import PrepareTensor, measure, write_slot
from tests.support import encode, photo_like


class OffByOne(PrepareTensor):
    """A transport that changes what it carries: each tensor lands in its slot plus one."""

    def into_slot(self, body: bytes, slot: int) -> int:
        return write_slot(self(body) + 1, slot)


@pytest.fixture(scope="module")
def prepare(exported: dict[str, Path]) -> PrepareTensor:
    folder = str(exported["image-classification"])
    model = load_source(folder, ServerSettings(models=[folder], backend="onnx", onnx_auto_export=False))
    return PrepareTensor(model.preprocessing, model.min_decode_size)


BODIES = [encode(photo_like(640, 480, seed), quality=90) for seed in range(3)]


def test_every_way_is_measured_on_the_same_tensors(prepare: PrepareTensor) -> None:
    rates = measure(prepare, 2, BODIES, seconds=0.2, rounds=1)
    assert set(rates) == {"threads", "processes", "shared"}
    assert all(rate > 0 for rate in rates.values()), rates


def test_a_pool_that_changes_the_tensors_is_not_timed(prepare: PrepareTensor) -> None:
    tampered = OffByOne(prepare.spec, prepare.reduce_to)
    with pytest.raises(SystemExit, match="another tensor than a thread computes"):
        measure(tampered, 1, BODIES, seconds=0.2, rounds=1)
