"""The PyTorch backend's devices and precisions: bf16 autocast keeps the decisions, precisions that would
be slower than fp32 are refused, and on a GPU (skipped without one) fp32 is the CPU's fp32, not TF32, and
the service answers as it does on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.backends import parity
from app.backends import torch_backend as torch_backend_module
from app.backends.torch_backend import TorchBackend, load_torch_backend
from app.nn.build import build_network
from app.repository import CheckpointError, read_model_dir
from tests.support import batch_for, encode, make_settings, photo_like, serving

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to PyTorch")
TASK_FOLDERS = ("model_dir", "seg_model_dir", "det_model_dir")


def assert_same_decisions(reference: np.ndarray, reduced: np.ndarray) -> None:
    """bfloat16 keeps 8 bits of mantissa and fp16 11, and the error grows through the network: on the
    width-0.5 demo, bf16 logits move by up to ~10% of their largest magnitude. The function stays, and so
    does each winner that leads by more than twice the error; a close call may swap within the top 5."""
    assert not np.array_equal(reference, reduced)  # really reduced precision
    error = np.abs(reference - reduced).max(axis=1)
    assert error.max() <= 0.15 * np.abs(reference).max()
    assert np.corrcoef(reference.ravel(), reduced.ravel())[0, 1] > 0.99
    top_two = np.sort(reference, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 2 * error
    assert clear.any()  # at least one decision that must hold
    assert (reference.argmax(1) == reduced.argmax(1))[clear].all()
    top_five = np.argsort(reference, axis=1)[:, -5:]
    assert all(winner in top for winner, top in zip(reduced.argmax(1), top_five, strict=True))


def test_bf16_autocast_keeps_the_decisions(model_dir: Path) -> None:
    batch = batch_for(model_dir, count=4)
    network = build_network(read_model_dir(model_dir))
    fp32 = TorchBackend(network).infer(batch)["logits"]
    bf16 = TorchBackend(network, precision="bf16").infer(batch)["logits"]
    assert bf16.dtype == np.float32  # post-processing always sees float32
    assert_same_decisions(fp32, bf16)


def test_precisions_slower_than_fp32_are_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = read_model_dir(model_dir)
    with pytest.raises(CheckpointError, match="fp16 on the CPU far slower than fp32"):
        load_torch_backend(folder, "cpu", "fp16")
    monkeypatch.setattr(torch_backend_module, "cpu_has_bf16", lambda: False)
    with pytest.raises(CheckpointError, match="no bfloat16 instructions"):
        load_torch_backend(folder, "cpu", "bf16")


def test_cuda_without_a_gpu_says_why(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = read_model_dir(model_dir)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(
        CheckpointError, match="is a CPU-only build: install a CUDA build, or use the gpu image"
    ):
        load_torch_backend(folder, "cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(CheckpointError, match="no GPU is visible"):
        load_torch_backend(folder, "cuda:1")


def test_the_service_says_which_precision_it_serves(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_backend_module, "cpu_has_bf16", lambda: True)  # whatever CPU runs the test
    with serving(model_dir, torch_precision="bf16") as client:
        (served,) = client.get("/models").json()
        assert (served["backend"], served["precision"]) == ("torch", "bf16")
        response = client.post("/classify", content=encode(photo_like(320, 240, seed=4)))
        assert response.status_code == 200 and len(response.json()) == 5


@needs_cuda
@pytest.mark.parametrize("folder", TASK_FOLDERS)
def test_cuda_fp32_matches_the_cpu(folder: str, request: pytest.FixtureRequest) -> None:
    model_dir = read_model_dir(request.getfixturevalue(folder))
    batch = batch_for(model_dir.path, count=4)
    expected = load_torch_backend(model_dir, "cpu").infer(batch)
    got = load_torch_backend(model_dir, "cuda").infer(batch)
    assert not torch.backends.cudnn.allow_tf32
    assert not parity.parity_problems(expected, got)


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_reduced_precisions_keep_the_decisions(model_dir: Path, precision: str) -> None:
    folder = read_model_dir(model_dir)
    batch = batch_for(model_dir, count=4)
    fp32 = load_torch_backend(folder, "cpu").infer(batch)["logits"]
    settings = make_settings(model_dir, device="cuda", torch_precision=precision)
    reduced = torch_backend_module.load(folder, settings).infer(batch)["logits"]  # autocast in CUDA graphs
    assert_same_decisions(fp32, reduced)


@needs_cuda
@pytest.mark.parametrize("folder", TASK_FOLDERS)
def test_the_service_on_cuda_answers_as_on_the_cpu(folder: str, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue(folder)
    body = encode(photo_like(640, 480, seed=9))
    answers = {}
    for device in ("cpu", "cuda"):
        with serving(model_dir, device=device, max_batch_size=8, max_queue_delay_ms=2) as client:
            (served,) = client.get("/models").json()
            route = {"image-classification": "/classify", "image-segmentation": "/segment"}.get(
                served["task"], "/detect"
            )
            response = client.post(route, content=body)
            assert response.status_code == 200, response.text
            assert response.headers["x-compute-type"] == device
            assert served["device"] == device
            answers[device] = response.json()
    cpu, cuda = answers["cpu"], answers["cuda"]
    assert [item["label"] for item in cuda] == [item["label"] for item in cpu]
    for got, expected in zip(cuda, cpu, strict=True):
        if "score" in expected:
            assert got["score"] == pytest.approx(expected["score"], abs=1e-3)
        if "box" in expected:
            assert (
                got["box"] == expected["box"]
                or max(abs(got["box"][k] - expected["box"][k]) for k in expected["box"]) <= 1
            )


@needs_cuda
@pytest.mark.parametrize("folder", TASK_FOLDERS)
def test_cuda_graphs_replay_what_eager_computes(folder: str, request: pytest.FixtureRequest) -> None:
    model_dir = read_model_dir(request.getfixturevalue(folder))
    backend = torch_backend_module.load(
        model_dir, make_settings(model_dir.path, device="cuda", max_batch_size=6)
    )
    assert backend.graphs is not None and backend.graphs.sizes == [1, 2, 4, 6]
    batch = batch_for(model_dir.path, count=7)
    eager = load_torch_backend(model_dir, "cuda")
    for count in (1, 3, 6, 7):  # exact, padded, the largest, and past the largest (eager)
        assert not parity.parity_problems(eager.infer(batch[:count]), backend.infer(batch[:count]))
    # The static buffers are reused: a later call does not change an earlier call's answer.
    first = backend.infer(batch[:2])
    backend.infer(batch[4:6])
    assert not parity.parity_problems(eager.infer(batch[:2]), first)
