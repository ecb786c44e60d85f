"""The serving and training precision chosen for each kind of CPU, from fixed /proc/cpuinfo flags."""

from __future__ import annotations

import pytest

from selflengthen.engine.launch import vllm_command
from selflengthen.engine.options import EngineOptions
from selflengthen.engine.precision import cpu_flags, cpu_kind, serving_precision, training_bf16
from selflengthen.errors import SelflengthenError

BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma f16c"
#: The flags lines of three CPUs this project has run on (cut to what matters here).
AMX = f"{BASE} avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8"  # Sapphire Rapids
ZEN4 = f"{BASE} avx2 avx512f avx512bw avx512_bf16"  # AVX-512 BF16 without AMX
AVX2 = f"{BASE} avx2"  # an AMD EPYC with AVX2 only


def cpuinfo(flags: str) -> str:
    one = f"vendor_id\t: X\nflags\t\t: {flags}\nbogomips\t: 5200\n"
    return f"processor\t: 0\n{one}\nprocessor\t: 1\n{one}"


@pytest.mark.parametrize(
    ("flags", "kind", "dtype"),
    [
        (AMX, "AMX-BF16", "bfloat16"),
        (ZEN4, "AVX-512 BF16", "bfloat16"),
        (f"{BASE} avx2 avx512f", "AVX-512 (no BF16)", "float32"),
        (AVX2, "AVX2 only", "float32"),
        (BASE, "no AVX2", "float32"),
    ],
)
def test_auto_serves_in_bf16_only_where_the_cpu_computes_it(flags: str, kind: str, dtype: str) -> None:
    read = cpu_flags(cpuinfo(flags))
    assert cpu_kind(read) == kind
    chosen = serving_precision("auto", gpu=False, flags=read)
    assert chosen.dtype == dtype and kind in chosen.reason
    assert training_bf16(gpu=False, flags=read) == (dtype == "bfloat16")


def test_what_the_user_sets_wins_and_a_gpu_is_left_to_vllm() -> None:
    avx2 = cpu_flags(cpuinfo(AVX2))
    assert serving_precision("bfloat16", gpu=False, flags=avx2).dtype == "bfloat16"
    assert serving_precision("auto", gpu=False, vllm_args=("--dtype", "half"), flags=avx2).dtype == "half"
    assert (
        serving_precision("float32", gpu=False, vllm_args=("--dtype=bfloat16",), flags=avx2).dtype
        == "bfloat16"
    )
    assert serving_precision("auto", gpu=True, flags=avx2).dtype is None
    assert training_bf16(gpu=True, flags=avx2)


def test_unreadable_flags_mean_no_bf16_hardware() -> None:
    assert cpu_flags("") == frozenset()
    assert serving_precision("auto", gpu=False, flags=frozenset()).dtype == "float32"


def test_the_server_command_carries_one_dtype_flag() -> None:
    on_this_cpu = serving_precision("auto", gpu=False).dtype
    command = vllm_command(EngineOptions(), "model", 8000, 0)
    assert command[command.index("--dtype") + 1] == on_this_cpu
    given = vllm_command(EngineOptions(vllm_args=("--dtype", "float32")), "model", 8000, 0)
    assert given.count("--dtype") == 1 and given[given.index("--dtype") + 1] == "float32"
    assert "float16" in vllm_command(EngineOptions(dtype="float16"), "model", 8000, 0)


def test_an_unknown_dtype_is_refused_naming_the_flag() -> None:
    with pytest.raises(SelflengthenError, match=r"^--dtype: one of auto, float32, bfloat16, float16"):
        EngineOptions(dtype="fp8")
