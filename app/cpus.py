"""The CPU this process runs on: how many CPUs it may really use (affinity and cgroup quota, not the
host's core count), its model name and its features."""

from __future__ import annotations

import functools
import math
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path


def _cgroup_cpu_limit() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


@functools.cache
def doubling_up_to(limit: int) -> list[int]:
    """1, 2, 4, ... and `limit` itself: the thread or process counts worth trying on `limit` CPUs."""
    return sorted({1, limit} | {2**power for power in range(limit.bit_length()) if 2**power <= limit})


def cpu_model() -> str:
    """The CPU's model name, as lscpu gives it ("AMD EPYC", "Intel(R) Xeon(R) ...", "Cortex-A76")."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return model_name(cpuinfo, _lscpu) or platform.processor() or platform.machine() or "unknown CPU"


def model_name(cpuinfo: str, lscpu: Callable[[], str]) -> str:
    """The model name from /proc/cpuinfo's text, or `lscpu`'s output where that has none; " + " between
    the kinds of core a chip mixes. Tuning records are keyed by it, so two CPUs must not share a name.
    Arm's /proc/cpuinfo names no model (or a generic one: "ARMv7 Processor"), only part numbers, which
    lscpu looks up; without lscpu the numbers themselves stand in."""
    if "CPU implementer" in cpuinfo:
        parts = zip(_values(cpuinfo, "CPU implementer"), _values(cpuinfo, "CPU part"), strict=False)
        names = _values(lscpu(), "Model name:") or [f"Arm implementer {i} part {p}" for i, p in parts]
    else:
        names = _values(cpuinfo, "model name") or _values(lscpu(), "Model name:")
    return " + ".join(dict.fromkeys(names))


def _values(text: str, field: str) -> list[str]:
    """The values of every `field: value` line (lscpu indents some; "-" is its unknown)."""
    lines = (line for line in text.splitlines() if line.strip().startswith(field) and ":" in line)
    values = (line.split(":", 1)[1].strip() for line in lines)
    return [value for value in values if value and value != "-"]


def _lscpu() -> str:
    try:
        done = subprocess.run(
            ["lscpu"],
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them ("flags" on x86, "Features" on Arm)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """bfloat16 arithmetic: AVX512-BF16 or AMX on x86, the BF16 extension on Arm."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})
