"""The CPU's instruction-set features that decide which precisions run fast and exactly on it.

One place answers "what does this CPU have" and "so which int8 weights / is bf16 native":

* int8: onnxruntime's x86 int8 kernels multiply u8 activations by s8 weights. With VNNI (`avx512_vnni` or
  `avx_vnni`) or AMX the products are summed in 32 bits, so full 8-bit weights are exact; without, the
  AVX2/AVX-512 path (`vpmaddubsw`) sums pairs in 16 bits and saturates unless weights keep 7 bits
  (`reduce_range`), which measured 10-17x the error of an exact simulation on a CPU without VNNI
  (shared/reference/cpu-inference.md).
* bf16: native only with `avx512_bf16` or AMX (`amx_bf16`); elsewhere it is emulated and slower than fp32.

Features come from /proc/cpuinfo's `flags` line (Linux), else from torch's dispatch level
(`torch.backends.cpu.get_cpu_capability()`, which says AVX2 / AVX512 but nothing about VNNI, so int8 keeps 7
bits). `on_actor_nodes()` gathers them from every node of a Ray cluster that can run actors (a task pinned to
each node other than the driver's) and keeps the features they all share, so a model quantized on the driver
is exact on whichever node its actors land.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

CPUINFO = "/proc/cpuinfo"

# feature name -> the /proc/cpuinfo flags that give it (any one)
FEATURES: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile",),
    "amx_bf16": ("amx_bf16",),
    "amx_int8": ("amx_int8",),
}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # what --precision bf16 needs (named in its error message)


@dataclass(frozen=True)
class CpuFeatures:
    """What one CPU (or every node of a cluster) offers.

    Attributes:
        model: the CPU model name (`model name` in /proc/cpuinfo); several joined by " | " for a cluster.
        features: the names of `FEATURES` present.
        source: where they were read: "cpuinfo", "torch" (dispatch level only) or "unknown".
    """

    model: str
    features: frozenset[str]
    source: str = "cpuinfo"

    @property
    def vnni(self) -> bool:
        return "vnni" in self.features

    @property
    def amx(self) -> bool:
        return "amx" in self.features

    @property
    def bf16(self) -> bool:
        """bf16 matrix maths in hardware (avx512_bf16 or AMX-BF16)."""
        return "avx512_bf16" in self.features or "amx_bf16" in self.features

    @property
    def int8_full_range(self) -> bool:
        """Whether int8 weights may use all 8 bits (VNNI or AMX: 32-bit sums), else 7 (`reduce_range`)."""
        return self.vnni or "amx_int8" in self.features

    @property
    def int8_choice(self) -> str:
        if self.int8_full_range:
            return "8-bit weights (VNNI/AMX: 32-bit sums, no saturation)"
        return "7-bit weights (reduce_range: no VNNI/AMX, 16-bit sums would saturate)"

    def describe(self) -> str:
        """One line: `CPU <model>: avx2 avx512 vnni ...; int8 <choice>; bf16 native|not native`."""
        listed = " ".join(sorted(self.features)) or "none of " + "/".join(FEATURES)
        bf16 = "bf16 native" if self.bf16 else "bf16 not native"
        return f"CPU {self.model}: {listed}; int8 {self.int8_choice}; {bf16}"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "features": sorted(self.features), "source": self.source,
                "int8_weight_bits": 8 if self.int8_full_range else 7, "int8_choice": self.int8_choice,
                "bf16_native": self.bf16}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CpuFeatures:
        return cls(str(data.get("model", "unknown")), frozenset(data.get("features", ())),
                   str(data.get("source", "unknown")))

    @classmethod
    def from_flags(cls, flags: Iterable[str], model: str = "unknown", source: str = "cpuinfo") -> CpuFeatures:
        present = set(flags)
        return cls(model, frozenset(name for name, names in FEATURES.items() if present.intersection(names)),
                   source)

    @classmethod
    def common(cls, nodes: Iterable[CpuFeatures]) -> CpuFeatures:
        """The features every one of `nodes` has (what a model shared by all their actors may rely on)."""
        nodes = list(nodes)
        if not nodes:
            return detect()
        features = frozenset.intersection(*(n.features for n in nodes))
        models = " | ".join(sorted({n.model for n in nodes}))
        sources = ",".join(sorted({n.source for n in nodes}))
        return cls(models, features, sources)


def parse_cpuinfo(text: str) -> CpuFeatures | None:
    """The features of /proc/cpuinfo's text (its first processor's `flags`), or None without a flags line."""
    model, flags = "unknown", None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = value.split()
        if flags is not None and model != "unknown":
            break
    return None if flags is None else CpuFeatures.from_flags(flags, model)


def _from_torch() -> CpuFeatures:
    """torch's dispatch level ("AVX512", "AVX2", "DEFAULT"...): no VNNI/AMX/BF16 information."""
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # torch missing or too old: nothing known
        return CpuFeatures(platform.processor() or "unknown", frozenset(), "unknown")
    flags = {"AVX512": ["avx2", "avx512f"], "AVX2": ["avx2"]}.get(capability, [])
    return CpuFeatures.from_flags(flags, platform.processor() or "unknown", "torch")


def detect(cpuinfo: str = CPUINFO) -> CpuFeatures:
    """This machine's features: /proc/cpuinfo, else torch's dispatch level."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            parsed = parse_cpuinfo(f.read())
    except OSError:
        parsed = None
    return parsed if parsed is not None else _from_torch()


def _detect_remote() -> CpuFeatures:  # runs in a Ray task on another node
    return detect()


def on_actor_nodes() -> CpuFeatures:
    """The features shared by every alive Ray node with CPUs (this one read directly, others by a 0-CPU
    task pinned to each); this machine's alone when Ray is not running."""
    import sys

    if "ray" not in sys.modules:
        return detect()
    import ray

    if not ray.is_initialized():
        return detect()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    task = ray.remote(num_cpus=0)(_detect_remote)
    remote = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
              for node in nodes if node != here]
    found = [detect()] if here in nodes or not nodes else []
    return CpuFeatures.common(found + list(ray.get(remote)))
