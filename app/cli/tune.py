"""`mvit tune`: measure a model's best batch size, instances and spin policy on this machine; record them
in the model folder, where `mvit serve` applies them."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from app.cli._common import (
    MODEL_LOADING_SETTINGS,
    Subcommands,
    add_setting_flags,
    one_line_errors,
    tool_settings,
)

if TYPE_CHECKING:
    from app.config import ServerSettings
    from app.repository import ModelDir
    from app.repository.tuning import TuningRecord
    from app.runtime.measure_tuning import Measurement


def register(sub: Subcommands) -> None:
    from app.repository.tuning import BATCH_SIZES

    tune = sub.add_parser(
        "tune",
        allow_abbrev=False,
        help="measure a model's best batch size, instances and spin policy on this machine; record them",
    )
    tune.add_argument("model", metavar="FOLDER", help="model folder (or a model the repository holds)")
    add_setting_flags(tune, ("model_repository", *MODEL_LOADING_SETTINGS))

    def sizes(text: str) -> list[int]:
        values = [int(part) for part in text.split(",") if part.strip()]
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError("give positive integers, comma-separated")
        return values

    tune.add_argument("--batch-sizes", type=sizes, default=list(BATCH_SIZES), help="default 1,2,4,8")
    tune.add_argument(
        "--instances",
        dest="instance_counts",
        type=sizes,
        help="instance counts to try (ONNX Runtime); default 1, 2, 4 and the threads",
    )
    tune.add_argument("--seconds", type=float, default=3.0, help="per configuration and round (default 3)")
    tune.add_argument("--rounds", type=int, default=3, help="rounds over the grid, rotated (default 3)")
    tune.add_argument(
        "--latency-slack",
        type=float,
        default=0.25,
        help="how much slower than the best a lone request may be in the chosen configuration (default 0.25)",
    )
    tune.add_argument(
        "--try-spinning",
        action="store_true",
        help="also try spinning ONNX Runtime threads: faster raw, but they hold the cores the decode threads "
        "need, so measure the service (benchmarks/bench.py) before keeping it",
    )
    workers = tune.add_argument_group(
        "worker counts",
        "with --workers: measure whole servers over HTTP instead (`mvit serve --workers N` for each count, "
        "on loopback) and record the best for `mvit serve --workers auto`",
    )

    def worker_counts(text: str) -> list[int]:
        if text.strip().lower() != "auto":
            return sizes(text)
        from app.cpus import available_cpus, doubling_up_to

        return doubling_up_to(available_cpus())

    workers.add_argument(
        "--workers",
        dest="worker_counts",
        type=worker_counts,
        metavar="N,N,...|auto",
        help="e.g. 1,2,4; auto: 1, 2, 4, ... up to the usable CPUs",
    )
    workers.add_argument(
        "--tune-each-share",
        action="store_true",
        help="first measure the batch size and instances for each count's share of the threads, where this "
        "machine has no record (the grid flags above apply)",
    )
    workers.add_argument(
        "--concurrency",
        type=int,
        help="connections sending requests (default: 8 per worker of the largest count)",
    )
    tune.set_defaults(func=run)


@one_line_errors("tune")
def run(args: argparse.Namespace) -> int:
    from app.repository import resolve
    from app.repository.tuning import write_record

    settings = tool_settings(args)
    model_dir = resolve(args.model, settings.model_repository)
    if args.worker_counts:
        return run_workers(args, settings, model_dir)
    record, best = tune_backend(args, settings, model_dir)
    recorded = write_record(model_dir.path, record)
    report(record, best, model_dir)
    print(f"recorded in {recorded}; `mvit serve` applies it on this machine")
    return 0


def tune_backend(
    args: argparse.Namespace, settings: ServerSettings, model_dir: ModelDir
) -> tuple[TuningRecord, Measurement]:
    from app.errors import CheckpointError
    from app.intake.preprocess import Preprocessing
    from app.runtime.measure_tuning import Plan, instance_counts_for, tune

    instance_counts = args.instance_counts or instance_counts_for(settings.inference_threads)
    input_size = Preprocessing.from_hf_config(model_dir.preprocessor_config).fixed_input_size
    if input_size is None:
        raise CheckpointError(f"{model_dir.path}: preprocessing must produce a fixed input size (crop)")
    plan = Plan(args.batch_sizes, instance_counts, args.seconds, args.rounds, try_spinning=args.try_spinning)
    return tune(
        model_dir,
        settings.model_options(),
        input_size,
        plan,
        args.latency_slack,
        command=shlex.join(["mvit", *args.argv]),
        progress=lambda line: print(line, file=sys.stderr),
    )


def tune_each_share(args: argparse.Namespace, settings: ServerSettings, model_dir: ModelDir) -> None:
    """Each count's workers run with their share of the threads, which a batch-size record measured with
    all of them does not cover: measure the shares that have no record (--tune-each-share), or say which."""
    from app.repository.tuning import write_record
    from app.runtime.apply_tuning import apply_tuning

    for count in sorted(set(args.worker_counts)):
        share = max(1, settings.inference_threads // count)
        each = settings.model_copy(update={"inference_threads": share})
        if apply_tuning(model_dir, each.model_options())[1].record is not None:
            continue
        if not args.tune_each_share:
            print(
                f"no batch-size record for {share} inference thread(s): {count} worker(s) run the defaults; "
                f"--tune-each-share (or `mvit tune FOLDER --inference-threads {share}`) measures it",
                file=sys.stderr,
            )
            continue
        print(f"batch sizes for {count} worker(s), {share} inference thread(s) each:", file=sys.stderr)
        record, _ = tune_backend(args, each, model_dir)
        write_record(model_dir.path, record)
        print(f"  chosen: {record.chosen}", file=sys.stderr)


def run_workers(args: argparse.Namespace, settings: ServerSettings, model_dir: ModelDir) -> int:
    from app.cpus import cpu_model
    from app.repository.tuning import write_record
    from app.tools.measure_workers import WorkerPlan, measure_workers

    counts = sorted(set(args.worker_counts))
    plan = WorkerPlan(counts, args.concurrency or 8 * max(counts), args.seconds, args.rounds)
    command = shlex.join(["mvit", *args.argv])
    print(f"$ {command}\nCPU: {cpu_model()}, {settings.inference_threads} inference threads", file=sys.stderr)
    tune_each_share(args, settings, model_dir)
    record = measure_workers(model_dir, settings, plan, command, lambda line: print(line, file=sys.stderr))
    recorded = write_record(model_dir.path, record)
    print(f"machine: {record.key.describe()}")
    fewest = record.measured[0]["workers"]
    for row in record.measured:
        low, high = row["requests_per_s_range"]
        paired = (
            ""
            if row["workers"] == fewest
            else " = {:.2f} ({:.2f}-{:.2f}) x {} worker(s)".format(
                row["relative"], *row["relative_range"], fewest
            )
        )
        print(
            f"  {row['workers']} worker(s), concurrency {row['concurrency']}: {row['requests_per_s']} req/s "
            f"({low}-{high}){paired}, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms"
        )
    print(f"chosen: {record.chosen}")
    print(f"recorded in {recorded}; `mvit serve --workers auto` applies it on this machine")
    return 0


def report(record: TuningRecord, best: Measurement, model_dir: ModelDir) -> None:
    """What was measured, what was chosen, and how a reduced precision compares with fp32 here."""
    from app.repository.tuning import find_record
    from app.runtime.apply_tuning import best_throughput

    print(f"machine: {record.key.describe()}")
    for row in record.measured:
        onnx_only = (
            f", instances {row['instances']}, spinning {'on' if row['onnx_allow_spinning'] else 'off'}"
            if record.key.backend == "onnx"
            else f", instances {row['instances']}"
            if record.key.backend == "openvino"
            else ""
        )
        print(
            f"  batch {row['max_batch_size']}{onnx_only}: {row['images_per_s']} img/s "
            f"({row['images_per_s_range'][0]}-{row['images_per_s_range'][1]}), lone request {row['lone_latency_ms']} ms"
        )
    print(
        f"chosen: {record.chosen} ({best.throughput:.1f} img/s, lone request {best.lone_latency_ms:.1f} ms)"
    )
    if record.key.precision != "fp32":
        fp32 = find_record(model_dir.path, replace(record.key, precision="fp32"))
        if fp32 is None:
            print("tune fp32 too (the same command without the precision flag) to compare the two here")
        else:
            print(
                f"{record.key.precision}: {best_throughput(record):.1f} img/s against fp32's "
                f"{best_throughput(fp32):.1f} on this machine"
                + ("; SLOWER: serve fp32 here" if best_throughput(record) < best_throughput(fp32) else "")
            )
