"""The run config's engine-facing sections (`engine:`, its `slurm:`/`ray:`, `sampling:`) and the
base every config section shares: strict types, unknown keys refused, frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selflengthen.engine.options import (
    DEFAULT_MAX_TOKENS,
    PAPER_SAMPLING,
    EngineOptions,
    RayOptions,
    SlurmOptions,
    secret_flag_problem,
)
from selflengthen.engine.precision import Dtype

Positive = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, le=1)]
#: Paths come from YAML as text.
LaxPath = Annotated[Path, Field(strict=False)]


class ConfigSection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SlurmSection(ConfigSection):
    """Generation on a Slurm cluster (see `SlurmOptions`)."""

    partition: Annotated[str, Field(min_length=1)]
    tasks: Positive = 1
    time: str = "24:00:00"
    gpus_per_task: Annotated[int, Field(ge=0)] = 1
    cpus_per_task: Positive = 8
    mem_per_cpu_gb: Positive = 8
    qos: str = "normal"
    sbatch_args: dict[str, str] = Field(default_factory=dict)
    poll_seconds: Annotated[float, Field(gt=0)] = 30.0

    def options(self) -> SlurmOptions:
        return SlurmOptions(
            **self.model_dump(exclude={"sbatch_args"}), sbatch_args=tuple(self.sbatch_args.items())
        )


class RaySection(ConfigSection):
    """Generation on a Ray cluster (see `RayOptions`)."""

    address: str | None = None
    tasks: Positive = 1
    gpus_per_task: Annotated[int, Field(ge=0)] = 1
    cpus_per_task: Positive = 8
    mem_per_cpu_gb: Annotated[float, Field(gt=0)] = 8.0

    def options(self) -> RayOptions:
        return RayOptions(**self.model_dump())


class EngineSection(ConfigSection):
    """How the loop serves its models with vLLM (see `EngineOptions`); the model is set per role.
    No endpoint here: each iteration serves the roles trained by the previous one."""

    max_model_len: Annotated[Positive, Field(description="Context length given to vLLM.")] = 4096
    gpu_memory_utilization: Annotated[
        float | None,
        Field(gt=0, le=1, description="vLLM memory fraction (default: 0.9 on GPU, 0.3 on CPU)."),
    ] = None
    tensor_parallel_size: Annotated[Positive, Field(description="vLLM tensor parallel size.")] = 1
    data_parallel_size: Annotated[Positive, Field(description="vLLM data parallel size.")] = 1
    host: str = "127.0.0.1"
    port: Annotated[
        int | None, Field(ge=1, le=65535, description="Port for the vLLM server (default: a free one).")
    ] = None
    trust_remote_code: Annotated[
        bool, Field(description="Let vLLM run code shipped with the model (off unless given).")
    ] = False
    enforce_eager: bool | None = None
    dtype: Annotated[
        Dtype,
        Field(
            description="Serving precision. auto: bfloat16 on a CPU with bf16 hardware (AMX, AVX-512 "
            "BF16), float32 on one without (AVX2 only: bf16 is emulated, ~3.5x slower), vLLM's "
            "choice on a GPU."
        ),
    ] = "auto"
    vllm_args: Annotated[
        list[str],
        Field(
            default_factory=list,
            description="Extra flag for the vLLM server, e.g. --vllm-arg=--enable-prefix-caching "
            "(repeatable).",
        ),
    ]
    startup_timeout: Annotated[
        float, Field(gt=0, description="Seconds to wait for the vLLM server to be ready.")
    ] = 900.0
    concurrency: Annotated[Positive, Field(description="Requests in flight at once.")] = 64
    slurm: SlurmSection | None = None
    ray: RaySection | None = None

    @model_validator(mode="after")
    def _one_cluster(self) -> EngineSection:
        if self.slurm is not None and self.ray is not None:
            raise ValueError("slurm and ray are two ways to run generation; choose one")
        return self

    @property
    def on_cluster(self) -> bool:
        """Whether generation runs on Slurm or Ray, each task serving its own model."""
        return self.slurm is not None or self.ray is not None

    @field_validator("vllm_args")
    @classmethod
    def _no_secrets(cls, arguments: list[str]) -> list[str]:
        if problem := secret_flag_problem(arguments):
            raise ValueError(problem)
        return arguments

    def options(self, model: str) -> EngineOptions:
        fields = self.model_dump(exclude={"vllm_args", "slurm", "ray"})
        slurm = self.slurm.options() if self.slurm else None
        ray = self.ray.options() if self.ray else None
        return EngineOptions(model=model, vllm_args=tuple(self.vllm_args), slurm=slurm, ray=ray, **fields)


class SamplingSection(ConfigSection):
    temperature: Annotated[float, Field(ge=0, description="Sampling temperature.")] = PAPER_SAMPLING[
        "temperature"
    ]
    top_p: Annotated[float, Field(gt=0, le=1, description="Nucleus sampling threshold.")] = PAPER_SAMPLING[
        "top_p"
    ]
    top_k: Annotated[int, Field(ge=-1, description="Top-k sampling (-1 for off).")] = PAPER_SAMPLING["top_k"]
    repetition_penalty: Annotated[float, Field(gt=0, description="Repetition penalty.")] = PAPER_SAMPLING[
        "repetition_penalty"
    ]
    max_tokens: Annotated[Positive, Field(description="Most new tokens per request.")] = DEFAULT_MAX_TOKENS
