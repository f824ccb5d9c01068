"""CPU feature detection and the precision choices it decides (int8 weight bits, native bf16)."""

from __future__ import annotations

import pytest

from pipeline import cpu_features
from pipeline.cpu_features import CpuFeatures, parse_cpuinfo

AMD_ZEN2 = "fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni"  # AVX2, no VNNI
INTEL_SPR = ("fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 "
             "amx_bf16 amx_tile amx_int8 avx_vnni")
ALDER_LAKE = "sse sse2 avx avx2 fma avx_vnni"  # VNNI without AVX-512
OLD = "fpu sse sse2 sse4_2"


def _cpuinfo(flags: str, model: str = "Test CPU") -> str:
    block = f"processor\t: 0\nvendor_id\t: X\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    return block + block.replace("processor\t: 0", "processor\t: 1")


@pytest.mark.parametrize(("flags", "features", "bits", "bf16"), [
    (AMD_ZEN2, {"avx2"}, 7, False),
    (INTEL_SPR, {"avx2", "avx512", "vnni", "avx512_bf16", "amx", "amx_bf16", "amx_int8"}, 8, True),
    (ALDER_LAKE, {"avx2", "vnni"}, 8, False),
    (OLD, set(), 7, False),
], ids=["avx2-no-vnni", "avx512-vnni-amx", "avx-vnni", "none"])
def test_choice_for_flag_sets(flags, features, bits, bf16):
    cpu = parse_cpuinfo(_cpuinfo(flags, "Some CPU @ 2.0GHz"))
    assert cpu is not None and cpu.model == "Some CPU @ 2.0GHz"
    assert cpu.features == features
    assert cpu.int8_full_range is (bits == 8) and cpu.bf16 is bf16
    record = cpu.to_json()
    assert record["int8_weight_bits"] == bits and record["features"] == sorted(features)
    assert CpuFeatures.from_json(record) == cpu
    assert ("7-bit" in cpu.describe()) is (bits == 7)


def test_a_cluster_relies_only_on_what_every_node_has():
    vnni = CpuFeatures.from_flags(INTEL_SPR.split(), "Xeon")
    plain = CpuFeatures.from_flags(AMD_ZEN2.split(), "EPYC")
    both = CpuFeatures.common([vnni, plain])
    assert both.features == {"avx2"} and not both.int8_full_range and not both.bf16
    assert both.model == "EPYC | Xeon"
    assert CpuFeatures.common([vnni, vnni]).int8_full_range


def test_without_cpuinfo_torch_gives_the_dispatch_level_only(tmp_path):
    import torch

    cpu = cpu_features.detect(str(tmp_path / "no-cpuinfo"))
    assert cpu.source == "torch"
    assert not cpu.vnni and not cpu.bf16  # torch's level says nothing about them: the safe choices
    level = torch.backends.cpu.get_cpu_capability().upper()
    assert ("avx512" in cpu.features) is (level == "AVX512")
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n")  # no flags line (e.g. some ARM kernels)
    assert cpu_features.detect(str(tmp_path / "cpuinfo")).source == "torch"


def test_this_machine_is_read_from_cpuinfo():
    from pathlib import Path

    if not Path(cpu_features.CPUINFO).is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    cpu = cpu_features.detect()
    flags = set(next(line for line in Path(cpu_features.CPUINFO).read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split())
    assert cpu.source == "cpuinfo"
    assert cpu.int8_full_range is bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    assert cpu.bf16 is bool(flags & {"avx512_bf16", "amx_bf16"})
    assert cpu_features.on_actor_nodes() == cpu  # no Ray running: this machine
