"""What reduced JPEG decoding (`MVIT_JPEG_REDUCE_GAP`) costs in fidelity and saves in time.

For each 12 MP bench photo (plain and phone-like), decode + preprocess it at full resolution and with
libjpeg's DCT-domain scaling at each gap, then compare the model input tensors (in 8-bit grey levels)
and the model outputs (max |logit diff|, top-1 agreement, max |softmax diff|). Times are medians of
decode + preprocess on one thread.

    python -m benchmarks.jpeg_reduce models/mobilevitv2-1.0-imagenet1k-256-random --gaps 1 2 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks._common import bench_set, command_line


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="classification model folder")
    parser.add_argument("--gaps", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--repeats", type=int, default=5, help="timed decodes per image and setting")
    args = parser.parse_args()

    from app.config import ServerSettings
    from app.intake.decode import decode
    from app.intake.preprocess import preprocess
    from app.runtime.models import load_source
    from app.tasks.classification import scores_from_logits

    print(f"$ {command_line()}")
    model = load_source(
        args.model, ServerSettings(models=[args.model], backend=args.backend, onnx_auto_export=False)
    )
    spec = model.preprocessing
    sets = {name: bench_set(name) for name in ("12MP", "12MP-phone")}

    def prepared(data: bytes, gap: float) -> tuple[np.ndarray, float]:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            decoded = decode(data, 10**8, spec.min_decode_size(gap))
            tensor = preprocess(decoded.image, spec, decoded.size)
            times.append(time.perf_counter() - started)
        return tensor, statistics.median(times)

    scale = 1 / (spec.rescale_factor or 1)  # back to 8-bit levels
    print(
        f"{'images':<11} {'gap':>4} {'decoded at':>11} {'ms':>7} {'max lvl':>8} {'mean lvl':>9} "
        f"{'max logit':>10} {'max prob':>9} {'top-1 same':>11}"
    )
    for name, files in sets.items():
        full = [prepared(data, 0) for data in files]
        full_logits = model.backend.infer(np.stack([t for t, _ in full]))["logits"]
        print(f"{name:<11} {'off':>4} {'4032x3024':>11} {1000 * statistics.median(s for _, s in full):7.1f}")
        for gap in args.gaps:
            reduced = [prepared(data, gap) for data in files]
            decoded_size = decode(files[0], 10**8, spec.min_decode_size(gap)).image.size
            diffs = [np.abs(r - f) * scale for (r, _), (f, _) in zip(reduced, full, strict=True)]
            logits = model.backend.infer(np.stack([t for t, _ in reduced]))["logits"]
            probs = np.stack([scores_from_logits(x, "softmax") for x in logits])
            full_probs = np.stack([scores_from_logits(x, "softmax") for x in full_logits])
            same = int((logits.argmax(1) == full_logits.argmax(1)).sum())
            print(
                f"{name:<11} {gap:>4g} {'x'.join(map(str, decoded_size)):>11} "
                f"{1000 * statistics.median(s for _, s in reduced):7.1f} {max(d.max() for d in diffs):8.1f} "
                f"{statistics.mean(float(d.mean()) for d in diffs):9.2f} {np.abs(logits - full_logits).max():10.4f} "
                f"{np.abs(probs - full_probs).max():9.4f} {same:>7}/{len(files)}"
            )


if __name__ == "__main__":
    main()
