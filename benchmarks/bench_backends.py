"""Raw backend speed: img/s and p50 latency per backend, task and batch size, on preprocessed tensors.

No HTTP, decoding or post-processing: the network alone, as each backend runs it in the server (same
threads, same OpenMP wait policy, ONNX Runtime without spin-waiting unless --spin). Backends are
interleaved round by round so machine noise hits them alike; medians are reported.

    pip install -e ".[export,bench]"
    mvit demo-models models/ --width 1.0 --task classification --task segmentation --task detection
    mvit export models/mobilevitv2-1.0-*-random
    python -m benchmarks.bench_backends models/mobilevitv2-1.0-*-random --rounds 20

`onnx-int8` and `openvino-int8` are measured for folders that have model.int8.onnx (`mvit export
--quantize int8`); `openvino-bf16` and `torch-bf16` on CPUs with bfloat16 support, `torch-fp16` on GPUs
(`--device cuda`, which applies to torch). For example:

    python -m benchmarks.bench_backends MODEL --backends onnx onnx-int8 openvino openvino-bf16 openvino-int8
    python -m benchmarks.bench_backends MODEL --backends torch torch-bf16 torch-fp16 --device cuda --batch-sizes 1 8 32
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._common import command_line

if TYPE_CHECKING:
    from app.runtime.models import ServedModel


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="model folders (exported with `mvit export`)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per backend and batch size")
    parser.add_argument(
        "--threads", type=int, help="intra-op threads (default: the CPUs this process may use)"
    )
    parser.add_argument("--spin", action="store_true", help="let idle threads spin (OMP and ONNX Runtime)")
    parser.add_argument("--device", default="cpu", help="for torch: cpu, cuda or cuda:N")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE" if args.spin else "PASSIVE")  # before torch loads
    import numpy as np

    from app.config import ServerSettings
    from app.cpus import available_cpus, cpu_model
    from app.intake.preprocess import preprocess
    from app.repository import ONNX_FILES
    from app.runtime.measure_tuning import timed_calls
    from app.runtime.models import load_source
    from benchmarks._common import bench_photos

    threads = args.threads or available_cpus()
    print(f"$ {command_line()}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {available_cpus()} usable by this process, {threads} intra-op threads; "
        f"{platform.machine()}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
    versions = []
    for module in ("torch", "onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            versions.append(f"{module} {__import__(module).__version__}")
    if args.device.startswith("cuda"):
        import torch

        versions.append(f"CUDA {torch.version.cuda} on {torch.cuda.get_device_name(args.device)}")
    print(", ".join(versions))
    print(f"{'folder':<42} {'backend':<14} {'batch':>5} {'p50 ms':>9} {'img/s':>8}")

    photos = bench_photos()
    # Every (folder, backend) pair, interleaved call by call at each batch size, so a slow spell of the
    # machine hits all of them alike (two copies of a folder quantized differently compare fairly).
    runs: dict[tuple[str, str], tuple[ServedModel, np.ndarray]] = {}
    names = [Path(source).name for source in args.models]
    if len(set(names)) != len(names):
        parser.error("the model folders' names label the rows: give folders with different names")
    for source in args.models:
        for name in args.backends:
            backend, _, precision = name.partition("-")
            file_precision = "int8" if precision == "int8" else "fp32"
            if not (Path(source) / ONNX_FILES[file_precision]).is_file() and backend != "torch":
                continue
            settings = ServerSettings(
                models=[source],
                backend=backend,
                device=args.device if backend == "torch" else "cpu",
                onnx_precision=file_precision,
                openvino_precision="bf16" if precision == "bf16" else "fp32",
                torch_precision=precision if backend == "torch" and precision else "fp32",
                inference_threads=threads,
                onnx_allow_spinning=args.spin,
                onnx_auto_export=False,
            )
            model = load_source(source, settings)
            tensors = np.stack([preprocess(p, model.preprocessing) for p in photos])
            runs[(Path(source).name, name)] = (model, tensors)
    for batch_size in args.batch_sizes:
        batches = {
            key: np.ascontiguousarray(np.resize(tensors, (batch_size, *tensors.shape[1:])))
            for key, (_, tensors) in runs.items()
        }
        times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
        for key, (model, _) in runs.items():  # warm-up at this shape
            model.backend.infer(batches[key])
        for _ in range(args.rounds):
            for key, (model, _) in runs.items():  # one timed call each, as `mvit tune` times a lone call
                times[key].append(timed_calls(model.backend, batches[key], 1, seconds=0, min_calls=1)[1])
        for (folder, name), samples in times.items():
            p50 = statistics.median(samples)
            print(f"{folder:<42} {name:<14} {batch_size:>5} {p50 * 1000:>9.1f} {batch_size / p50:>8.1f}")


if __name__ == "__main__":
    main()
