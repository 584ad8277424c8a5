#!/usr/bin/env bash
# Issue 34's measurements on a lent machine with one GPU and 16 cores, in one call of at most 9.5 minutes.
# Prepare here with `bash scripts/setup-device.sh` (the wheels the machine lacks), then call the device
# tool with: command "bash benchmarks/scale_up.sh", carry [".whl"], timeout_s 600.
#
# Parts, each bounded in time and writing its own file under $OUT as it ends; one that fails or runs out
# of time leaves the others to run:
#   machine.txt  the GPU, the CPU model, the versions;
#   gpu.txt      raw GPU (torch, CUDA graphs) vs the service with 1, 4 and 8 workers, concurrency 1 and 32
#                (a line per server and round as it goes, the table at the end);
#   decode.txt   decode + preprocessing on threads vs processes vs shared memory, and nvJPEG;
#   cpu.txt      raw ONNX Runtime vs the service with 1, 2, 4 and auto workers on the CPU, concurrency 32;
#   threads.txt  where one GPU worker's CPU goes per request, thread by thread (CUDA graphs).
# The parts run in that order of importance, each within its own limit and what is left of
# SCALE_UP_BUDGET_S (570 s: the device tool's 600 s per call, less a margin for the install and the transfers).
# Between parts it stops every `app.cli serve` left on the machine: meant for a lent machine, not a shared one.
# SCALE_UP_DEVICE=cpu skips the GPU (a rehearsal on any machine); SCALE_UP_WIDTH picks the model width.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-test-artifacts/scale-up}"
device="${SCALE_UP_DEVICE:-cuda}"
width="${SCALE_UP_WIDTH:-1.0}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
started=$SECONDS

budget="${SCALE_UP_BUDGET_S:-570}"

part() {  # part NAME SECONDS COMMAND...: run one part with a time limit, its output in $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    local left=$((budget - (SECONDS - started)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        echo "== $name: skipped, ${left} s of the budget left"
        return
    fi
    echo "== $name (limit ${limit} s, at $((SECONDS - started)) s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.txt" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - started)) s"
    tail -n 40 "$out/$name.txt"
    no_servers_left
}

no_servers_left() {  # a part cut short may leave servers draining: none may run into the next part
    pkill -TERM -f "app.cli serve" || return 0
    for _ in $(seq 20); do
        pgrep -f "app.cli serve" >/dev/null || return 0
        sleep 1
    done
    pkill -KILL -f "app.cli serve"
}

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi

{
    date -u
    lscpu | grep -E '^(Model name|CPU\(s\))'
    [ "$device" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import platform, onnxruntime, torch; print("Python", platform.python_version(), "torch", torch.__version__, "onnxruntime", onnxruntime.__version__)'
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

model="models/mobilevitv2-${width}-imagenet1k-256-random"
part models 100 bash -c "python3 -m app.cli demo-models models --width $width --task classification && python3 -m app.cli export $model"
[ -f "$model/model.onnx" ] || { echo "no model: see $out/models.txt"; exit 1; }

serve=(--no-naive --no-peer --images 640x480 --rounds 2 --seconds 3)
if [ "$device" = cuda ]; then
    part gpu 260 env MVIT_DEVICE=cuda python3 -m benchmarks.bench "$model" --backend torch "${serve[@]}" \
        --concurrency 1 32 --mvit w1 w4:MVIT_WORKERS=4 w8:MVIT_WORKERS=8
fi
part decode 75 python3 -m benchmarks.bench_decode_scaling "$model" --device "$device" --parallel 1 4 16 --seconds 2 --rounds 1
part cpu 150 env MVIT_DEVICE=cpu python3 -m benchmarks.bench "$model" --backend onnx "${serve[@]}" \
    --concurrency 32 --mvit w1 w2:MVIT_WORKERS=2 w4:MVIT_WORKERS=4 auto:MVIT_WORKERS=auto
if [ "$device" = cuda ]; then
    part threads 60 env MVIT_DEVICE=cuda python3 -m benchmarks.cpu_per_request "$model" --backend torch \
        --concurrency 32 --rounds 1 --seconds 5
fi
echo "== done in $((SECONDS - started)) s; files in $out"
