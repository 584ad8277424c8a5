"""Service configuration, stated once: each field is an `MVIT_*` environment variable and a `mvit serve` flag.

Two owners:
- `ModelOptions`: how one model is loaded, run and batched. The server's values are every model's
  defaults; a models.yaml entry overrides those in PER_MODEL_OPTIONS, and `mvit tune`'s record fills in
  what the operator left alone. Backends and the batcher read only these.
- `ServerSettings`: the process (address, limits, authentication, logging), plus the defaults above.

`app.cli` generates the flags and their help from these fields, and docs/configuration.md lists them all
(a test checks it does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.cpus import available_cpus

DEFAULT_MODEL = "apple/mobilevitv2-1.0-imagenet1k-256"
# The model options a models.yaml entry may set for its own model.
PER_MODEL_OPTIONS = (
    "backend",
    "onnx_precision",
    "openvino_precision",
    "torch_precision",
    "device",
    "max_batch_size",
    "max_queue_delay_ms",
    "max_queue_size",
    "instances",
    "preprocessing",
)
# Settings never given as a command-line flag: `ps` shows a process's arguments.
ENVIRONMENT_ONLY = frozenset({"api_tokens"})
# List settings whose flag takes one value and may repeat, named in the singular.
REPEATED_FLAGS = {"models": "--model", "cors_origins": "--cors-origin", "onnx_providers": "--onnx-provider"}


class ModelOptions(BaseModel):
    """How one model is loaded, run and batched."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["torch", "onnx", "openvino"] = Field(
        "torch",
        description="Inference backend: PyTorch, ONNX Runtime or OpenVINO (the last two run model.onnx).",
    )
    device: str = Field(
        "cpu",
        description="cpu, cuda or cuda:N (PyTorch device / ONNX Runtime CUDA provider); with openvino: cpu, gpu, "
        "gpu.N or npu.",
    )
    onnx_precision: Literal["fp32", "int8"] = Field(
        "fp32", description="Serve model.onnx (fp32) or model.int8.onnx (`mvit export --quantize int8`)."
    )
    openvino_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="What OpenVINO computes in: fp32 (exact), or bf16 (CPUs with AVX512-BF16 or AMX). "
        "INT8 is --onnx-precision int8, which OpenVINO runs as INT8.",
    )
    torch_precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="What PyTorch computes in: fp32 (exact; no TF32 on GPUs), or bf16/fp16 autocast "
        "(bf16: GPUs and CPUs with AVX512-BF16 or AMX; fp16: GPUs only).",
    )
    cuda_graphs: bool = Field(
        True,
        description="torch on GPUs: capture the network as one CUDA graph per batch size at load "
        "(the GIL stays free for HTTP and decoding); off runs it eagerly.",
    )
    onnx_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimization level."
    )
    onnx_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Explicit ONNX Runtime execution providers, in order (comma-separated); default from device.",
    )
    onnx_allow_spinning: bool = Field(
        False,
        description="Let the idle threads of concurrent ONNX Runtime instances spin (faster alone, slower beside "
        "decode threads); with several instances, the all-threads session for lone requests always may.",
    )
    onnx_cache: bool = Field(
        True, description="Save optimized graphs under <model>/onnx-cache/ for fast restarts."
    )
    onnx_auto_export: bool = Field(
        True, description="Export model.onnx at start when it is missing or stale (needs torch)."
    )
    inference_threads: int = Field(
        default_factory=available_cpus,
        ge=1,
        description="Intra-op threads (torch or ONNX Runtime); default: the CPUs this process may use.",
    )
    instances: int = Field(
        0,
        ge=0,
        description="Batches one model may run at once (Triton's instance count), splitting the inference "
        "threads between them; 0 = auto: one per inference thread for ONNX Runtime on CPU, else 1.",
    )
    max_batch_size: int = Field(8, ge=1, description="Most requests one inference call takes at once.")
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        description="How long a request may wait for a batch to fill; 0 runs whatever is waiting at once.",
    )
    max_queue_size: int = Field(
        64, ge=1, description="Requests one model may hold at once (body received to answer); more get 429."
    )
    preprocessing: Literal["auto", "trained", "hf"] = Field(
        "auto",
        description="Preprocessing profile: trained (as the weights were trained: RGB, bicubic, the "
        "evaluation crop), hf (preprocessor_config.json exactly as transformers reads it), or auto: "
        "trained for weights whose training pipeline is known (Apple's), else hf (docs/preprocessing.md).",
    )
    jpeg_reduce_gap: float = Field(
        2.0,
        description="Decode big JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) while at least this "
        "many times the model's resize resolution remains; 0 always decodes every pixel.",
    )
    tune_at_start_s: float = Field(
        0.0,
        ge=0,
        description="A model without a `mvit tune` record for this machine is measured for about this many "
        "seconds while it loads (before the service is ready), and the record is written into its folder "
        "where it can be; 0 = off.",
    )

    @field_validator("jpeg_reduce_gap")
    @classmethod
    def _gap_is_off_or_at_least_one(cls, value: float) -> float:
        if value != 0 and value < 1:
            raise ValueError("must be 0 (off) or at least 1 (never decode below the resize size)")
        return value

    @field_validator("onnx_providers", mode="before")
    @classmethod
    def _split_provider_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class ServerSettings(ModelOptions, BaseSettings):
    """The process's settings, from MVIT_* variables and flags; its model options are every model's defaults."""

    model_config = SettingsConfigDict(env_prefix="MVIT_", extra="ignore")

    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535, description="Port.")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Model folders or Hugging Face Hub ids to serve (comma-separated in MVIT_MODELS); "
        "default: the repository's models.yaml, else " + DEFAULT_MODEL + ".",
    )
    model_repository: Path = Field(Path("models"), description="Where Hub downloads and demo models live.")
    hub_revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit) to fetch; default: the pinned one for known ids, else main.",
    )
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Larger bodies get 413.")
    max_image_pixels: int = Field(
        50_000_000, gt=0, description="Larger images get 413 (decompression bombs)."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Deadline per inference request, body upload included; then 504."
    )
    body_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Time a client has to send its whole request body; then 408. Slow uploads never "
        "hold a queue slot: a request joins its model's queue once its body is in.",
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: how long accepted requests may take to finish before the process exits.",
    )
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer tokens that may call the service (comma-separated in MVIT_API_TOKENS); "
        "none and no api_tokens_file = no authentication. Environment only: `ps` would show a flag.",
    )
    api_tokens_file: Path | None = Field(
        None, description="A file of bearer tokens, one per line (# starts a comment); adds to api_tokens."
    )
    metrics_require_token: bool = Field(True, description="With tokens set, /metrics needs one too.")
    ready_require_token: bool = Field(
        False, description="With tokens set, /ready needs one too (probes usually have none)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the service (comma-separated; * for any); default none.",
    )
    render_max_side: int = Field(
        1600,
        ge=0,
        description="Longest side of annotated images (render=png|jpeg); 0 draws at the photo's own size.",
    )
    decode_threads: int = Field(
        default_factory=available_cpus,
        ge=1,
        description="Decode/preprocess threads; default: the CPUs this process may use.",
    )
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1,
        description="Server processes sharing the port, each with its own models; the inference and decode "
        "threads are divided among them. A dead worker is replaced; /metrics sums them all. auto: what "
        "`mvit tune --workers` measured best here, else one per 4 CPUs.",
    )
    worker_heartbeat_timeout_s: float = Field(
        30.0,
        gt=0,
        description="With workers: one whose event loop has not run for this long (hung, or stopped) is "
        "killed and replaced.",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="How much to log."
    )
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line.")
    access_log: bool = Field(True, description="One log line per request (logger mvit.access).")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("workers", mode="before")
    @classmethod
    def _count_or_auto(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"give a number of processes (1 or more) or auto, not {value!r}")
        return int(text)

    @field_validator("models", "api_tokens", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def model_options(self) -> ModelOptions:
        """Every model's defaults. What the operator set stays marked as set (`model_fields_set`): a tuning
        record never overrides it."""
        names = ModelOptions.model_fields.keys()
        return ModelOptions.model_construct(
            _fields_set=self.model_fields_set & names, **{name: getattr(self, name) for name in names}
        )
