"""The bad-input battery: malformed input across the CLI, pointed at a finished run folder.

Each case asserts a non-zero exit, one line on stderr that names the culprit (no traceback
without --debug), no secret echoed, and the run folder byte-for-byte as it was. Every case has
its own copy of the run folder, so that the cases can run side by side.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from selflengthen.folder_lock import LOCK_NAME
from tests.run_fixture import make_run

pytestmark = pytest.mark.e2e

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
SECRET = "sk-battery-0123456789abcdef"


@dataclass
class Case:
    """`args` for the CLI; `config` (a change to the fixture's run config, or raw text/bytes)
    is written to `run.yaml` and `{config}` in `args` names it; `{run}` names the run copy and
    `{case}` (in `args` and `message`) the case's folder."""

    name: str
    args: list[str]
    message: str
    config: Any = None
    files: dict[str, str | bytes] = field(default_factory=dict)


def _merge(base: dict, change: dict) -> dict:
    """`base` with `change` laid over it (a `None` value removes the key)."""
    merged = dict(base)
    for key, value in change.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


RUN = ["run", "--config", "{config}"]
GENERATE = ["generate", "--run-dir", "{run}", "--iteration", "2", "--instructions", "{case}/good.jsonl"]
GOOD_INSTRUCTIONS = {"good.jsonl": '{"instruction": "Write a long story about a lighthouse."}\n'}
ANSWER = (
    '{{"id": "a", "query": "About 100 words.", "type": "about", "constraint": "100", "language": "en", '
    '"model": "m", "response": {response}}}\n'
)


def seeds_case(name: str, message: str, file: str, content: str | bytes | None) -> Case:
    """`run` with `self_instruct.seeds: file` (written with `content` unless None)."""
    files = {file: content} if content is not None else {}
    return Case(name, RUN, message, config={"self_instruct": {"seeds": file}}, files=files)


def cases(busy_port: int, closed_port: int, web_port: int) -> list[Case]:
    return [
        Case("bad YAML", RUN, "run.yaml: not valid YAML (line", config="name: fixture\niterations: [1\n"),
        Case("not a mapping", RUN, "run.yaml: a run config must be a YAML mapping", config="- name\n"),
        Case("unknown key", RUN, "run.yaml: iteratons: unknown key", config={"iteratons": 2}),
        Case(
            "unknown nested key",
            RUN,
            "run.yaml: extend.roundz: unknown key",
            config={"extend": {"roundz": 2}},
        ),
        Case(
            "wrong type",
            RUN,
            "run.yaml: iterations: Input should be a valid integer",
            config={"iterations": "two"},
        ),
        Case(
            "wrong type (bool)",
            RUN,
            "engine.trust_remote_code: Input should be a valid boolean",
            config={"engine": {"trust_remote_code": "maybe"}},
        ),
        Case(
            "negative count",
            RUN,
            "self_instruct.count: Input should be greater than or equal to 1",
            config={"self_instruct": {"count": -5}},
        ),
        Case(
            "zero samples",
            RUN,
            "generate.samples_per_instruction: Input should be greater than or equal to 1",
            config={"generate": {"samples_per_instruction": 0}},
        ),
        Case(
            "probability above 1",
            RUN,
            "sft_data.line_drop_probability: Input should be less than 1",
            config={"sft_data": {"line_drop_probability": 1.5}},
        ),
        Case(
            "inconsistent bounds",
            RUN,
            "length_control: Value error, min_words (900) is above max_words",
            config={"length_control": {"min_words": 900, "max_words": 300}},
        ),
        Case("missing required key", RUN, "run.yaml: train: Field required", config={"train": None}),
        Case(
            "secret in vllm_args",
            RUN,
            "engine.vllm_args: Value error, --api-key takes a secret",
            config={"engine": {"vllm_args": ["--api-key", SECRET]}},
        ),
        Case(
            "missing config file",
            ["run", "--config", "{case}/absent.yaml"],
            "absent.yaml: no such config file",
        ),
        Case("config not UTF-8", RUN, "run.yaml: cannot read it", config=b"name: caf\xe9\n"),
        seeds_case("missing seeds file", "self_instruct.seeds: no such file", "absent.jsonl", None),
        seeds_case("empty seeds file", "empty.jsonl: the file is empty", "empty.jsonl", ""),
        seeds_case(
            "seeds not UTF-8",
            "latin1.jsonl: not UTF-8",
            "latin1.jsonl",
            '{"instruction": "caf\xe9"}\n'.encode("latin-1"),
        ),
        seeds_case(
            "seeds with a NUL byte",
            "nul.jsonl: line 2: a NUL byte (offset 52); the file is not text",
            "nul.jsonl",
            b'{"instruction": "Write a poem."}\n{"instruction": "Wr\x00ite."}\n',
        ),
        Case(
            "instruction escaping a lone surrogate",
            [*GENERATE[:-1], "{case}/surrogate.jsonl"],
            "surrogate.jsonl: line 1, field 'instruction': a lone UTF-16 surrogate (\\ud800)",
            files={"surrogate.jsonl": '{"instruction": "Write about \\ud800 this."}\n'},
        ),
        Case(
            "instruction escaping NUL",
            [*GENERATE[:-1], "{case}/nul-escape.jsonl"],
            "nul-escape.jsonl: line 1, field 'instruction': a NUL character",
            files={"nul-escape.jsonl": '{"instruction": "Write\\u0000 this."}\n'},
        ),
        seeds_case(
            "seeds with the wrong column",
            "no column 'instruction'",
            "prompts.jsonl",
            '{"prompt": "Write."}\n',
        ),
        Case(
            "model folder without weights",
            RUN,
            "the folder has no weights",
            config={"model": "{case}/weightless"},
            files={"weightless/config.json": "{}"},
        ),
        Case(
            "model folder without a chat template",
            RUN,
            "templateless: its tokenizer has no chat template",
            config={"model": "{case}/templateless"},
            files={
                "templateless/config.json": "{}",
                "templateless/model.safetensors": "",
                "templateless/tokenizer_config.json": '{"eos_token": "</s>"}',
            },
        ),
        Case("unknown model name", RUN, "model 'qwen9': not an embedded model", config={"model": "qwen9"}),
        Case(
            "port in use",
            RUN,
            f"engine.port: 127.0.0.1:{busy_port} is already in use",
            config={"engine": {"port": busy_port}},
        ),
        Case(
            "run folder from another config",
            RUN,
            "made with a different config (seed differ",
            config={"seed": 1},
        ),
        Case(
            "TRL recipe with an unknown argument",
            RUN,
            "bad_sft.yaml: warmup_ratio: not an argument of TRL",
            config={"train": {"recipe": "{case}/bad_sft.yaml"}},
            files={"bad_sft.yaml": "warmup_ratio: 0.1\n"},
        ),
        Case(
            "TRL recipe that would not train a LoRA adapter",
            RUN,
            "full_sft.yaml: use_peft: must be true",
            config={"train": {"recipe": "{case}/full_sft.yaml"}},
            files={"full_sft.yaml": "learning_rate: 1.0e-5\n"},
        ),
        Case(
            "accelerate config that needs DeepSpeed, without DeepSpeed",
            RUN,
            "zero3.yaml (DeepSpeed) needs deepspeed, which is not installed",
            config={"train": {"launcher": "accelerate", "accelerate_config": "{case}/zero3.yaml"}},
            files={"zero3.yaml": "distributed_type: DEEPSPEED\nnum_processes: 1\nuse_cpu: true\n"},
        ),
        Case(
            "vLLM asked for more GPUs than there are",
            RUN,
            "engine.tensor_parallel_size × engine.data_parallel_size: 2 × 1 = 2 GPUs per server",
            config={"engine": {"tensor_parallel_size": 2}},
        ),
        Case(
            "--set without a value",
            [*RUN, "--set", "engine.concurrency"],
            "--set 'engine.concurrency': expected KEY=VALUE",
            config={},
        ),
        Case(
            "--iterations out of range",
            [*RUN, "--iterations", "3"],
            "--iterations 3: the config has iterations 1..1",
            config={},
        ),
        Case(
            "--from-step unknown",
            [*RUN, "--from-step", "polish"],
            "--from-step: unknown step 'polish'",
            config={},
        ),
        Case(
            "repo id without a slash",
            ["publish", "{run}", "--repo", "fixture", "--dry-run", "--out", "{case}/pub"],
            "--repo: expected ORG/NAME, got 'fixture'",
        ),
        Case(
            "repo id with two slashes",
            ["publish", "{run}", "--repo", "a/b/c", "--dry-run", "--out", "{case}/pub"],
            "--repo: expected ORG/NAME, got 'a/b/c'",
        ),
        Case(
            "port in use (step command)",
            [*GENERATE, "--port", str(busy_port)],
            f"--port: 127.0.0.1:{busy_port} is already in use",
            files=GOOD_INSTRUCTIONS,
        ),
        Case(
            "unreachable endpoint",
            [
                *GENERATE,
                "--model",
                "m",
                "--endpoint",
                f"http://127.0.0.1:{closed_port}/v1",
                "--api-key-env",
                "BATTERY_KEY",
            ],
            f"--endpoint http://127.0.0.1:{closed_port}/v1: no answer within 30 s",
            files=GOOD_INSTRUCTIONS,
        ),
        Case(
            "endpoint that is a web page, not an OpenAI API",
            [*GENERATE, "--model", "m", "--endpoint", f"http://127.0.0.1:{web_port}/v1"],
            "/v1/models answered HTTP 404 without an OpenAI model list; not an OpenAI-compatible API",
            files=GOOD_INSTRUCTIONS,
        ),
        Case(
            "negative count (step command)",
            ["self-instruct", "--run-dir", "{run}", "--count", "-3"],
            "--count: Input should be greater than or equal to 1",
        ),
        Case(
            "run_dir is a file",
            RUN,
            "afile: exists and is not a folder",
            config={"run_dir": "{case}/afile"},
            files={"afile": "x"},
        ),
        Case(
            "--run-dir is a file (step command)",
            ["generate", "--run-dir", "{case}/afile", "--instructions", "{case}/good.jsonl"],
            "--run-dir {case}/afile: exists and is not a folder",
            files={"afile": "x", **GOOD_INSTRUCTIONS},
        ),
        Case(
            "max_tokens leaves no room for the prompt",
            RUN,
            "sampling.max_tokens: 512 leaves no room for the prompt in a context of 512 tokens",
            config={"engine": {"max_model_len": 512}, "sampling": {"max_tokens": 512}},
        ),
        Case(
            "--max-tokens leaves no room for the prompt (step command)",
            [*GENERATE, "--max-tokens", "16384", "--max-model-len", "4096"],
            "--max-tokens 16384 leaves no room for the prompt in a context of 4096 tokens",
            files=GOOD_INSTRUCTIONS,
        ),
        Case(
            "eval --responses with a missing answer",
            ["eval", "--responses", "{case}/answers.jsonl", "--out", "{case}/out"],
            "answers.jsonl: `response` is missing or null in 1 row(s) (first: row 2)",
            files={
                "answers.jsonl": ANSWER.format(response='"Fifty words."') + ANSWER.format(response="null")
            },
        ),
        Case(
            "sample: numbers written as text",
            ["sample", "{case}/lengths.jsonl", "{case}/out.jsonl", "--length-column", "words"],
            "lengths.jsonl: length_column 'words' holds numbers written as text",
            files={"lengths.jsonl": '{"words": "300"}\n{"words": "12"}\n'},
        ),
        Case(
            "sample: a negative length",
            ["sample", "{case}/lengths.jsonl", "{case}/out.jsonl", "--length-column", "words"],
            "lengths.jsonl: length_column 'words' has a length that is not a word count (-3)",
            files={"lengths.jsonl": '{"words": 5}\n{"words": -3}\n'},
        ),
    ]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder), but the lock record that a
    command holding the folder writes (`folder_lock`): it is not a result."""
    return {
        str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(folder.rglob("*"))
        if path.name != LOCK_NAME
    }


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("battery") / "fixture", iterations=1)


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"<html>Not Found</html>")

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def ports() -> Iterator[tuple[int, int, int]]:
    """A busy port, a closed one, and a web server that answers 404 to everything."""
    web = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    with socket.socket() as busy, socket.socket() as closed:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield busy.getsockname()[1], closed.getsockname()[1], web.server_address[1]
    web.shutdown()


def prepare(case: Case, fixture_run: Path, folder: Path) -> tuple[list[str], Path]:
    """The case's folder: a copy of the run, its files and config; returns the CLI arguments."""
    run_dir = folder / "run"
    shutil.copytree(fixture_run, run_dir, symlinks=True)
    for name, content in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    names = {"case": str(folder), "run": str(run_dir), "config": str(folder / "run.yaml")}
    config = case.config
    if isinstance(config, dict):
        saved = yaml.safe_load((fixture_run / "config.yaml").read_text())
        changed = yaml.safe_dump(_merge(saved | {"run_dir": str(run_dir)}, config))
        (folder / "run.yaml").write_text(changed.replace("{case}", str(folder)))
    elif isinstance(config, bytes):
        (folder / "run.yaml").write_bytes(config)
    elif isinstance(config, str):
        (folder / "run.yaml").write_text(config)
    return [argument.format(**names) for argument in case.args], run_dir


def check(case: Case, fixture_run: Path, folder: Path) -> str | None:
    """Run one case; what went wrong, or None."""
    args, run_dir = prepare(case, fixture_run, folder)
    before = snapshot(run_dir)
    environment = {**os.environ, "BATTERY_KEY": SECRET}
    result = subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=300, env=environment, cwd=folder
    )
    lines = result.stderr.strip().splitlines()
    problems = []
    if result.returncode == 0:
        problems.append("exit 0")
    message = case.message.replace("{case}", str(folder))
    if len(lines) != 1 or not lines[0].startswith("selflengthen: error: ") or message not in lines[0]:
        problems.append(f"stderr {result.stderr[-600:]!r}")
    if "Traceback" in result.stderr or SECRET in result.stdout + result.stderr:
        problems.append("a traceback or the secret in the output")
    if snapshot(run_dir) != before:
        problems.append("the run folder changed")
    if (folder / "pub").exists():
        problems.append("publish wrote its output")
    return f"{case.name}: {'; '.join(problems)}" if problems else None


def test_the_battery_has_what_the_issue_lists() -> None:
    table = cases(1, 2, 3)
    assert len(table) >= 20 and len({case.name for case in table}) == len(table)


def test_bad_input_is_one_line_and_leaves_the_run_folder_unchanged(
    fixture_run: Path, ports: tuple[int, int, int], tmp_path: Path
) -> None:
    table = cases(*ports)
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = pool.map(
            lambda item: check(item[1], fixture_run, tmp_path / f"case{item[0]}"), enumerate(table)
        )
        failures = [failure for failure in failures if failure]
    assert not failures, "\n".join(failures)


def test_debug_shows_the_traceback_of_a_bad_config(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("name: [x\n")
    result = subprocess.run(
        [SCRIPT, "--debug", "run", "--config", str(tmp_path / "run.yaml")], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "run.yaml: not valid YAML" in result.stderr
