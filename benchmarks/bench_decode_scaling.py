"""How decode + preprocessing scales over cores: threads of one process, as the service's decode pool
runs them, against a pool of processes, and JPEG decoding on the GPU (nvJPEG) where one is present.

This is the measurement behind the choice between N full workers and a decode process pool feeding one
inference process (issue 34, docs/performance.md). If the threads of one process scale with the cores,
the GIL does not bound decoding and a process pool buys nothing over them; if they stall, it does.

  * threads:   `app.runtime.pipeline.prepare`'s decode + preprocess on K threads of this process;
  * processes: the same functions in K spawned processes, the float32 tensor sent back by pipe
    (pickled: 0.8 MB per 256 px image through the pool's result thread);
  * shared:    the same K processes writing each tensor into a slot of one shared-memory block, and
    sending back only the slot's number: the design's transport, where the batcher would stack the
    batch straight from the slots;
  * full-size: Pillow decoding every pixel and nothing more on as many threads as the table's largest K,
    and with --device cuda `torchvision.io.decode_jpeg(device="cuda")` (nvJPEG) on batches of 32, the
    same work (no resize: the GPU's resize filters differ from Pillow's, so the answers would change).

Each figure is images per second over `--seconds`, best of `--rounds` (the machine's neighbours only
slow it down). The K's default to 1, 2, 4, ... up to the usable CPUs.

    pip install -e ".[bench]"
    python -m benchmarks.bench_decode_scaling models/mobilevitv2-1.0-imagenet1k-256-random --images 640x480
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from multiprocessing import shared_memory

import numpy as np

from benchmarks._common import BENCH_SETS, bench_set, command_line

MAX_PIXELS = 10**9
IN_FLIGHT_PER_SLOT = 4
_block: shared_memory.SharedMemory | None = None  # in a pool process: the block its tensors go into


def prepare_tensor(body: bytes, spec: object, reduce_to: tuple[int, int] | None) -> np.ndarray:
    """What a decode-pool thread does for one request: bytes -> model input tensor."""
    from app.intake.decode import decode
    from app.intake.preprocess import preprocess

    decoded = decode(body, MAX_PIXELS, reduce_to)
    return preprocess(decoded.image, spec, decoded.size)  # type: ignore[arg-type]


class PrepareTensor:
    """`prepare_tensor` with the model's preprocessing bound; picklable, for the process pool."""

    def __init__(self, spec: object, reduce_to: tuple[int, int] | None) -> None:
        self.spec, self.reduce_to = spec, reduce_to

    def __call__(self, body: bytes) -> np.ndarray:
        return prepare_tensor(body, self.spec, self.reduce_to)

    def into_slot(self, body: bytes, slot: int) -> int:
        """In a pool process: the tensor written into shared-memory slot `slot`; returns the slot."""
        return write_slot(self(body), slot)


def write_slot(tensor: np.ndarray, slot: int) -> int:
    """In a pool process: `tensor` copied into slot `slot` of the shared block; returns the slot."""
    assert _block is not None, "the pool's initializer attaches the block"
    target = np.ndarray(tensor.shape, np.float32, buffer=_block.buf, offset=slot * tensor.nbytes)
    target[...] = tensor
    return slot


def attach_block(name: str) -> None:
    """A pool process's initializer: open the shared block by name."""
    global _block
    _block = shared_memory.SharedMemory(name=name)


def images_per_second(
    start: Callable[[bytes, int], Future[object]], slots: int, bodies: list[bytes], seconds: float
) -> float:
    """Keep `slots` workers busy for `seconds`: `start(body, in_flight_index)` begins one image, and
    IN_FLIGHT_PER_SLOT calls per worker are in flight; a finished call's index goes to the next one."""
    turn = 0
    pending: dict[Future[object], int] = {}
    for index in range(IN_FLIGHT_PER_SLOT * slots):
        pending[start(bodies[turn % len(bodies)], index)] = index
        turn += 1
    done, started = 0, time.perf_counter()
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            future.result()
            index = pending.pop(future)
            done += 1
            if time.perf_counter() - started < seconds:
                pending[start(bodies[turn % len(bodies)], index)] = index
                turn += 1
    return done / (time.perf_counter() - started)


def full_decode(body: bytes) -> object:
    """Every pixel of a JPEG decoded by Pillow, as the service would without reduced decoding."""
    from app.intake.decode import decode

    return decode(body, MAX_PIXELS).image


def nvjpeg_images_per_second(bodies: list[bytes], batch: int, seconds: float) -> float:
    """torchvision's GPU JPEG decoder on batches of `batch` files, timed with the device synchronised."""
    import torch
    from torchvision.io import decode_jpeg

    files = [torch.frombuffer(bytearray(body), dtype=torch.uint8) for body in bodies]
    batches = [[files[(start + i) % len(files)] for i in range(batch)] for start in range(len(files))]
    decode_jpeg(batches[0], device="cuda")  # the decoder's start-up is not what is measured
    torch.cuda.synchronize()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        decode_jpeg(batches[done // batch % len(batches)], device="cuda")
        torch.cuda.synchronize()
        done += batch
    return done / (time.perf_counter() - started)


def same_tensors(
    call: PrepareTensor,
    bodies: list[bytes],
    piped: ProcessPoolExecutor,
    shared: ProcessPoolExecutor,
    block: shared_memory.SharedMemory,
) -> None:
    """SystemExit unless both process pools deliver, for every image, the tensor a thread computes."""
    for number, body in enumerate(bodies):
        expected = call(body)
        slot = shared.submit(call.into_slot, body, 0).result()
        from_slot = np.ndarray(expected.shape, np.float32, buffer=block.buf, offset=slot * expected.nbytes)
        if not (
            np.array_equal(piped.submit(call, body).result(), expected)
            and np.array_equal(from_slot, expected)
        ):
            raise SystemExit(
                f"image {number}: a process pool delivered another tensor than a thread computes"
            )


def measure(
    call: PrepareTensor, k: int, bodies: list[bytes], seconds: float, rounds: int
) -> dict[str, float]:
    """Best img/s of each way to run `call` on `k` workers, the ways interleaved in every round."""
    spawn = multiprocessing.get_context("spawn")
    slot_bytes = call(bodies[0]).nbytes  # every tensor: the served models take one fixed input size
    block = shared_memory.SharedMemory(create=True, size=IN_FLIGHT_PER_SLOT * k * slot_bytes)
    try:
        with (
            ThreadPoolExecutor(k) as threads,
            ProcessPoolExecutor(k, mp_context=spawn) as piped,
            ProcessPoolExecutor(
                k, mp_context=spawn, initializer=attach_block, initargs=(block.name,)
            ) as shared,
        ):
            ways: dict[str, Callable[[bytes, int], Future[object]]] = {
                "threads": lambda body, _: threads.submit(call, body),
                "processes": lambda body, _: piped.submit(call, body),
                "shared": lambda body, index: shared.submit(call.into_slot, body, index),
            }
            same_tensors(call, bodies, piped, shared, block)
            for start in ways.values():  # start every process and its imports
                images_per_second(start, k, bodies, 0.5)
            best = dict.fromkeys(ways, 0.0)
            for _ in range(rounds):
                for name, start in ways.items():
                    best[name] = max(best[name], images_per_second(start, k, bodies, seconds))
            return best
    finally:
        block.close()
        block.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="exported model folder: its preprocessing is what runs")
    parser.add_argument("--images", nargs="+", choices=tuple(BENCH_SETS), default=["640x480"])
    parser.add_argument(
        "--parallel", type=int, nargs="+", help="thread and process counts (default 1, 2, 4, ... CPUs)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: nvJPEG too")
    args = parser.parse_args()

    from app.config import ServerSettings
    from app.cpus import available_cpus, cpu_model, doubling_up_to
    from app.runtime.models import load_source

    model = load_source(
        args.model, ServerSettings(models=[args.model], backend="onnx", onnx_auto_export=False)
    )
    call = PrepareTensor(model.preprocessing, model.min_decode_size)
    print(f"$ {command_line()}")
    print(
        f"{time.strftime('%Y-%m-%d')}; {cpu_model()}, {available_cpus()} usable CPUs; {platform.machine()}, "
        f"Python {platform.python_version()}; {model.id}; best of {args.rounds} rounds of {args.seconds:g} s"
    )
    print(
        "| images | K | threads img/s | processes (pipe) img/s | processes (shared memory) img/s | shared / threads |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    sets = {image_set: bench_set(image_set) for image_set in args.images}
    counts = args.parallel or doubling_up_to(available_cpus())
    for image_set, bodies in sets.items():
        for k in counts:
            best = measure(call, k, bodies, args.seconds, args.rounds)
            print(
                f"| {image_set} | {k} | {best['threads']:.1f} | {best['processes']:.1f} | {best['shared']:.1f} "
                f"| {best['shared'] / best['threads']:.2f} |",
                flush=True,
            )
    # nvJPEG decodes every pixel: its comparison is Pillow decoding every pixel, not the table's reduced
    # decode plus preprocessing.
    threads = max(counts)
    print("\nfull-size JPEG decode alone, img/s:")
    for image_set, bodies in sets.items():
        with ThreadPoolExecutor(threads) as pool:
            pillow = max(
                images_per_second(
                    lambda body, _: pool.submit(full_decode, body), threads, bodies, args.seconds
                )
                for _ in range(args.rounds)
            )
        line = f"  {image_set}: Pillow on {threads} threads {pillow:.1f}"
        if args.device == "cuda":
            import torch

            nvjpeg = max(nvjpeg_images_per_second(bodies, 32, args.seconds) for _ in range(args.rounds))
            line += f"; nvJPEG on {torch.cuda.get_device_name()}, batches of 32, {nvjpeg:.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
