"""The CPU's model name (app/cpus.py), which keys tuning records: x86 names its model in /proc/cpuinfo;
Arm gives part numbers only, so lscpu's lookup names it, or the numbers themselves stand in."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.cpus import model_name

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu avx512_vnni avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu avx512_vnni avx512_bf16
"""


def arm_block(processor: int, part: str, model_name_line: str = "") -> str:
    return (
        f"processor\t: {processor}\n{model_name_line}BogoMIPS\t: 48.00\n"
        "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x2\nCPU part\t: {part}\n"
        "CPU revision\t: 0\n\n"
    )


# A big.LITTLE board (RK3588): four Cortex-A55 and four Cortex-A76.
ARM_CPUINFO = "".join(arm_block(n, "0xd05" if n < 4 else "0xd0b") for n in range(8))
ARM_LSCPU = """Architecture:             aarch64
  CPU op-mode(s):         32-bit, 64-bit
  Byte Order:             Little Endian
CPU(s):                   8
  On-line CPU(s) list:    0-7
Vendor ID:                ARM
  Model name:             Cortex-A55
    Model:                0
    Thread(s) per core:   1
  Model name:             Cortex-A76
    Model:                0
    Thread(s) per core:   1
"""


def no_lscpu() -> str:
    return ""


def lscpu_not_wanted() -> str:
    raise AssertionError("x86 names its model in /proc/cpuinfo")


def test_x86_names_its_model_in_cpuinfo() -> None:
    assert model_name(X86_CPUINFO, lscpu_not_wanted) == "AMD EPYC"


def test_arm_is_named_by_lscpu_one_name_per_kind_of_core() -> None:
    assert model_name(ARM_CPUINFO, lambda: ARM_LSCPU) == "Cortex-A55 + Cortex-A76"


@pytest.mark.parametrize("lscpu", [no_lscpu, lambda: "Vendor ID: ARM\n  Model name: -\n"])
def test_without_a_name_from_lscpu_arm_part_numbers_stand_in(lscpu: Callable[[], str]) -> None:
    assert model_name(ARM_CPUINFO, lscpu) == (
        "Arm implementer 0x41 part 0xd05 + Arm implementer 0x41 part 0xd0b"
    )


def test_a_generic_arm_model_name_does_not_hide_the_part() -> None:
    """32-bit Arm kernels print "model name: ARMv7 Processor rev 3 (v7l)" for a Cortex-A53 and an A72 alike."""
    generic = "model name\t: ARMv7 Processor rev 3 (v7l)\n"
    a53 = "".join(arm_block(n, "0xd03", generic) for n in range(4))
    a72 = "".join(arm_block(n, "0xd08", generic) for n in range(4))
    assert model_name(a53, no_lscpu) != model_name(a72, no_lscpu)
