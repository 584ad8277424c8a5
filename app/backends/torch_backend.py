"""PyTorch backend: runs batches of preprocessed arrays through a model folder's network.

- precision: fp32 by default, exact on GPUs too (TF32 off); `--torch-precision bf16|fp16` opts in to
  autocast, refused where it would be slower than fp32 (fp16 on a CPU, bf16 on a CPU without bfloat16
  instructions or a GPU older than Ampere).
- GPUs: one CUDA graph per batch size, captured at load (`--no-cuda-graphs` runs eagerly). Eager PyTorch
  launches the network's few hundred kernels one by one from Python, holding the GIL all the while; a
  graph launches them at once, which frees the GIL for the HTTP and decode threads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.config import ModelOptions
from app.cpus import cpu_has_bf16
from app.errors import CheckpointError
from app.intake.preprocess import Preprocessing
from app.nn.build import build_network
from app.repository import ModelDir, read_model_dir

log = logging.getLogger(__name__)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class CudaGraphs:
    """The network captured as one CUDA graph per batch size, replayed on static input buffers. A batch
    runs on the smallest graph that holds it; the rows past it hold stale inputs, which is harmless since
    every layer computes each image on its own."""

    def __init__(
        self, run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], example: torch.Tensor, sizes: list[int]
    ) -> None:
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        pool = torch.cuda.graph_pool_handle()  # all sizes share one memory pool
        for size in sorted(set(sizes), reverse=True):
            inputs = example[:1].expand(size, *example.shape[1:]).clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # cuDNN picks its algorithms before the capture
                for _ in range(2):
                    run(inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = run(inputs)
            self.graphs[size] = (graph, inputs, outputs)
        self.sizes = sorted(self.graphs)

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, ...] | None:
        count = len(batch)
        size = next((size for size in self.sizes if size >= count), None)
        if size is None:
            return None
        graph, inputs, outputs = self.graphs[size]
        inputs[:count].copy_(torch.from_numpy(batch))
        with torch.cuda.device(inputs.device):
            graph.replay()
        return tuple(output[:count] for output in outputs)


class TorchBackend:
    """Runs an nn.Module on float32 NCHW batches; returns named NumPy outputs."""

    name = "torch"
    instances = 1  # torch's intra-op thread count is per process: concurrent calls would oversubscribe

    def __init__(
        self, module: nn.Module, device: str = "cpu", artifact: str = "", precision: str = "fp32"
    ) -> None:
        self.artifact = artifact
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.autocast = AUTOCAST_DTYPES[precision]
        self.graphs: CudaGraphs | None = None

    @property
    def device_type(self) -> str:
        return self.device.type

    def run(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # No autocast cache: a graph must not keep casts of the weights from its capture.
        with torch.autocast(
            self.device.type,
            self.autocast or torch.bfloat16,
            enabled=bool(self.autocast),
            cache_enabled=False,
        ):
            outputs = self.module(inputs)
        return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)

    @torch.inference_mode()
    def capture_cuda_graphs(self, input_size: tuple[int, int], batch_sizes: list[int]) -> None:
        """Capture the network for these batch sizes; a capture that fails leaves the backend eager."""
        example = torch.zeros(1, 3, *input_size, device=self.device)
        try:
            with torch.cuda.device(self.device):  # streams and the memory pool of this GPU, not cuda:0
                self.graphs = CudaGraphs(self.run, example, batch_sizes)
        except RuntimeError as exc:
            log.warning("CUDA graphs could not be captured, running eagerly: %s", exc)
            self.graphs = None
        else:
            log.info("CUDA graphs captured for batch sizes %s", ", ".join(map(str, self.graphs.sizes)))

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.graphs(batch) if self.graphs is not None else None
        if outputs is None:
            outputs = self.run(torch.from_numpy(batch).to(self.device))
        names = getattr(self.module, "output_names", ("logits",))
        return {name: out.float().cpu().numpy() for name, out in zip(names, outputs, strict=True)}

    infer_on_instance = infer


def set_threads(threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    with contextlib.suppress(RuntimeError):  # can only be set once per process
        torch.set_num_interop_threads(1)


def cuda_device_name(device: str) -> str | None:
    """The name of the GPU `device` ("cuda", "cuda:N") designates; None where CUDA is not available."""
    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    return torch.cuda.get_device_name(index if index is not None else torch.cuda.current_device())


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a reduced precision this device would run slower than fp32."""
    flag = f"--torch-precision {precision}"
    if device.type == "cpu" and precision == "fp16":
        raise CheckpointError(
            f"{flag}: PyTorch runs fp16 on the CPU far slower than fp32; serve fp32 or bf16"
        )
    if device.type == "cpu" and precision == "bf16" and not cpu_has_bf16():
        raise CheckpointError(
            f"{flag}: this CPU has no bfloat16 instructions (AVX512-BF16, AMX or Arm BF16); serve fp32"
        )
    if (
        device.type == "cuda"
        and precision == "bf16"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise CheckpointError(
            f"{flag}: {torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; serve fp16"
        )


def load_torch_backend(model_dir: ModelDir, device: str = "cpu", precision: str = "fp32") -> TorchBackend:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = (
                f"this PyTorch ({torch.__version__}) is a CPU-only build: install a CUDA build, or use the gpu image"
                if torch.version.cuda is None
                else "no GPU is visible (the driver, CUDA_VISIBLE_DEVICES, or the container's --gpus)"
            )
            raise CheckpointError(f"device {device!r} requested but CUDA is not available to PyTorch: {why}")
        # PyTorch lets cuDNN round fp32 convolutions to TF32 by default: not the fp32 the references compute.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    check_precision(precision, torch.device(device))
    weights = model_dir.require_weights().name
    return TorchBackend(build_network(model_dir), device, artifact=weights, precision=precision)


def verify_model_folder(path: Path) -> None:
    """Refuse a folder whose weights do not load strictly into the network its config describes."""
    build_network(read_model_dir(path))


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two below the largest batch, and the largest: a batch pads to at most twice its size."""
    return sorted(
        {2**k for k in range(max_batch_size.bit_length()) if 2**k < max_batch_size} | {max_batch_size}
    )


def load(model_dir: ModelDir, options: ModelOptions) -> TorchBackend:
    set_threads(options.inference_threads)
    backend = load_torch_backend(model_dir, options.device, options.torch_precision)
    input_size = Preprocessing.from_hf_config(model_dir.preprocessor_config).fixed_input_size
    if backend.device_type == "cuda" and options.cuda_graphs and input_size is not None:
        backend.capture_cuda_graphs(input_size, graph_batch_sizes(options.max_batch_size))
    return backend
