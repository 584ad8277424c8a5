"""How close tuning at start (`MVIT_TUNE_AT_START_S`) comes to a full `mvit tune`, and how long it takes.

Runs the server's start-up tuning (`app.runtime.measure_tuning.tune_at_start`) on a fresh copy of a model folder,
without its tuning.json, for each budget, `--repeats` times, interleaved; prints each choice, the time
taken, and every configuration's figures. Compare the choices with `mvit tune FOLDER --rounds 3` run on
the same machine.

    python -m benchmarks.tune_at_start models/mobilevitv2-1.0-imagenet1k-256-random --budgets 15 30 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from app.config import ServerSettings
from app.cpus import cpu_model
from app.intake.preprocess import Preprocessing
from app.repository import read_model_dir
from app.repository.tuning import TUNING_FILE
from app.runtime.measure_tuning import tune_at_start
from benchmarks._common import command_line


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="a model folder")
    parser.add_argument("--backend", default="onnx", choices=["onnx", "openvino", "torch"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[15.0, 30.0], help="seconds")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}")
    print(f"command: {command_line()}")
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / args.model.name
        for repeat in range(args.repeats):
            for budget in args.budgets:
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(args.model, copy, ignore=shutil.ignore_patterns(TUNING_FILE))
                model_dir = read_model_dir(copy)
                input_size = Preprocessing.from_hf_config(model_dir.preprocessor_config).fixed_input_size
                assert input_size is not None
                settings = ServerSettings(models=[str(copy)], backend=args.backend, tune_at_start_s=budget)
                started = time.perf_counter()
                _, tuning = tune_at_start(model_dir, settings.model_options(), input_size)
                took = time.perf_counter() - started
                assert tuning.record is not None
                rows = ", ".join(
                    f"b{row['max_batch_size']}/i{row['instances']} {row['images_per_s']}"
                    for row in tuning.record.measured
                )
                print(
                    f"repeat {repeat + 1}, budget {budget:g} s: took {took:.1f} s, chose {tuning.record.chosen}; "
                    f"img/s: {rows}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
