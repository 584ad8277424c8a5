"""Service configuration: `MVIT_*` environment variables, overridden by `mvit serve` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.cpus import available_cpus

DEFAULT_MODEL = "apple/mobilevitv2-1.0-imagenet1k-256"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MVIT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Model folders or Hugging Face Hub ids to serve (comma-separated in MVIT_MODELS); "
        "default: the repository's models.yaml, else " + DEFAULT_MODEL + ".",
    )
    model_repository: Path = Field(Path("models"), description="Where Hub downloads and demo models live.")
    hub_revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to download.")
    backend: Literal["torch", "onnx"] = "torch"
    device: str = Field(
        "cpu", description="cpu, cuda or cuda:N (PyTorch device / ONNX Runtime CUDA provider)."
    )
    onnx_precision: Literal["fp32", "int8"] = Field(
        "fp32", description="Serve model.onnx (fp32) or model.int8.onnx (`mvit export --quantize int8`)."
    )
    onnx_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimization level."
    )
    onnx_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Explicit ONNX Runtime execution providers, in order (comma-separated); default from device.",
    )
    onnx_allow_spinning: bool = Field(
        False, description="Let idle ONNX Runtime threads spin (faster alone, slower beside decode threads)."
    )
    onnx_cache: bool = Field(
        True, description="Save optimized graphs under <model>/onnx-cache/ for fast restarts."
    )
    onnx_auto_export: bool = Field(
        True, description="Export model.onnx at start when it is missing or stale (needs torch)."
    )
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Larger bodies get 413.")
    max_image_pixels: int = Field(
        50_000_000, gt=0, description="Larger images get 413 (decompression bombs)."
    )
    max_batch_size: int = Field(8, ge=1, description="Most requests one inference call takes at once.")
    inference_threads: int = Field(
        default_factory=available_cpus, ge=1, description="Intra-op threads (torch or ONNX Runtime)."
    )
    decode_threads: int = Field(default_factory=available_cpus, ge=1, description="Decode/preprocess pool.")
    log_level: str = "info"

    @field_validator("models", "onnx_providers", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
