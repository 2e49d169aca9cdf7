"""Service settings: one pydantic-settings class, every field an env var `NLPSERVE_<FIELD>`.

`python -m service` turns every field into a command-line option too (`--max-queue-size`), so the
CLI and the environment cannot drift apart. Values are validated one by one and across fields at
startup; `describe_error` turns a ValidationError into the one-line message the CLI prints.
"""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.decode_policy import JOIN_GROUP_BUSY_ROWS, JOIN_GROUP_MAX_HELD_STEPS, DecodePolicy
from service.repository import MODEL_NAME_PATTERN

ENV_PREFIX = "NLPSERVE_"


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's CPU limit, which leaves the affinity at the node's every core: sizing lanes
    and runs by the node's cores would start a lane process per node core in a 2-core pod)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_quota(cgroup: Path) -> float | None:
    """CPUs of the cgroup quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None if unlimited."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not period.isdigit() or int(period) == 0:
        return None
    try:
        return int(quota) / int(period)
    except ValueError:
        return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- where and how to serve
    model_repository: Path = Field(description="directory holding <model>/config.json and versions")
    host: str = Field(default="127.0.0.1", description="interface to bind (0.0.0.0 in containers)")
    port: int = Field(default=8000, ge=1, le=65535)
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="Open Inference Protocol over gRPC (tritonclient.grpc) on this port; 0: off",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="json: one object per line; text: readable lines; auto: text at a terminal, "
        "json otherwise",
    )

    otlp_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry traces to this OTLP/HTTP endpoint, e.g. "
        "http://collector:4318/v1/traces (off when unset; needs the otel extra)",
    )

    fast_lane: bool = Field(
        default=True,
        description="POST /v1/classify, /v1/nli, /v1/translate (not streamed) and the V2 infer "
        "are answered in front of FastAPI's routing and dependency layers, with the same models "
        "and errors (off: every request takes the FastAPI route; for comparison)",
    )

    # --- connections (uvicorn's HTTP/1.1 server; see service/connections.py)
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="open connections at once; a new one past it gets 503 and is closed",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="a request's line and headers must arrive within this, else the connection "
        "is closed (slow or silent clients)",
    )
    # Longer than clients' own pool expiry (httpx 5 s, requests/urllib3 none, Go 90 s, AWS ALB
    # 60 s) so the client, not the server, closes an idle connection: a server that closes
    # first races the client's next request on it, which then fails as a connection error.
    # 75 s is nginx's default.
    keep_alive_timeout_s: float = Field(
        default=75.0, gt=0, le=3600, description="idle kept-alive connections close after this"
    )
    max_header_bytes: int = Field(
        default=65_536, ge=1024, le=16_777_216, description="request line + headers; 431 above"
    )

    # --- ONNX Runtime
    providers: Literal["cpu", "cuda", "auto"] = Field(
        default="auto",
        description="auto: CUDA when onnxruntime-gpu and a GPU work, else CPU (logged)",
    )
    cuda_device_id: int = Field(default=0, ge=0)
    intra_op_threads: int = Field(
        default_factory=available_cores,
        ge=1,
        le=256,
        description="threads per session; lower it when several models are busy at once",
    )
    workers_per_model: int = Field(
        default=1,
        ge=1,
        le=64,
        description="engine runs in flight per model, each on its own thread with "
        "intra_op_threads ORT threads (on CPU, workers x threads should not exceed the cores)",
    )
    side_by_side_under_load: bool = Field(
        default=True,
        description="CPU, workers_per_model 1: under load a model's batches (a classifier's, a "
        "translator's batched by request) go side by side on one thread each (intra_op_threads "
        "of them) instead of one at a time on every thread; a run with the server to itself "
        "keeps every thread (second, one-thread sessions); a step-scheduled translator decodes "
        "in one lane per core (decode_lanes)",
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    allow_spinning: bool = Field(
        default=True,
        description="ORT worker threads spin while idle: lower latency, more CPU burned",
    )
    spin_only_during_runs: bool = Field(
        default=True,
        description="with allow_spinning: idle threads stop spinning as soon as no run is in "
        "flight, so they do not take the cores from the HTTP side between batches",
    )

    # --- request limits
    max_items_per_request: int = Field(default=64, ge=1, le=100_000)
    max_text_chars: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    truncate: bool = Field(
        default=True,
        description="truncate inputs longer than a model's max_length (else reject: 422)",
    )
    request_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    max_queue_size: int = Field(
        default=1024, ge=1, description="queued sequences per model; 429 above"
    )
    max_in_flight: int = Field(
        default=0,
        ge=0,
        description="inference requests in flight before 429 is answered unparsed; 0: derived "
        "from the measured answer rate and request_timeout_s",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="comma-separated; when set, inference routes need one"
    )

    # --- models and batching
    pinned_versions: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict, description="comma-separated name=version pairs, e.g. sentiment=2"
    )
    max_batch_size: int | None = Field(
        default=None, ge=1, le=4096, description="overrides every model"
    )
    max_batch_tokens: int | None = Field(default=None, ge=1, description="overrides every model")
    max_queue_delay_ms: float | None = Field(
        default=None, ge=0, le=60_000, description="overrides all"
    )
    # ~15 tokens per ORT run for MiniLM (measurements.md: batch 1 vs 32 at length 32). Measured
    # in-process, MiniLM fp32, 768 one-sentence requests of mixed length, 64 in flight: no
    # splitting 27-34 seq/s (padding efficiency 0.31); 0-32 here 97-154 seq/s (0.91-1.0).
    run_overhead_tokens: int = Field(
        default=16,
        ge=0,
        description="per-run cost in padded tokens: a sorted batch is split into runs of similar "
        "length when that saves more padding than this",
    )
    regroup_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="after a run of N items, a smaller batch waits up to this long past the "
        "run's end for the rest of its clients to come back (0: off)",
    )
    # --- translation decoding (service/decode_scheduler.py)
    translation_batching: Literal["step", "request"] = Field(
        default="step",
        description="step: sequences join and leave the running decode batch at every step "
        "(iteration-level batching); request: a batch decodes until its longest sequence ends",
    )
    decode_max_running_sequences: int = Field(
        default=64, ge=1, le=4096, description="decoder rows running at once (beam-K takes K)"
    )
    decode_join_group: int = Field(
        default=DecodePolicy().join_group,
        ge=1,
        le=64,
        description="step-scheduled translators: a busy running batch (at least "
        f"{JOIN_GROUP_BUSY_ROWS} rows) lets whole-answer joiners gather up to this many for one "
        f"encoder run, holding them back at most {JOIN_GROUP_MAX_HELD_STEPS} steps (1: every "
        "joiner joins at the first step boundary; service/decode_policy.py)",
    )
    decode_encode_ahead: bool = Field(
        default=True,
        description="step-scheduled translators, when intra_op_threads leaves a core free: "
        "joiners are encoded on a thread of their own beside the running batch's decoder step "
        "and join at the next step, so decoding never waits for the encoder (else: encoded "
        "inside the step)",
    )
    decode_encode_streams_early: bool = Field(
        default=False,
        description="step-scheduled translators: a streamed sequence arriving while a step runs "
        "is encoded at once on a thread of its own beside that step and joins at the next step "
        "already encoded (else: encoded inside the step it joins; off: over HTTP it moved the "
        "first piece by less than the noise, reports/translation-benchmark.md, stop 28)",
    )
    decode_lanes: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="step-scheduled translators on CPU: this many independent step schedulers "
        "(lanes) side by side, one-thread decoder runs each, the budgets shared out among them "
        "(None: one per core with side_by_side_under_load, else 1)",
    )
    decode_tail_lane: bool = Field(
        default=True,
        description="step-scheduled translators with two lanes or more: the first lane takes "
        "the long texts and is kept lighter than the others, so that the tail of the latency "
        "distribution, the long texts, steps faster (service/lane_routing.py; 32 users, the "
        "recipe's translator, every 8th text four sentences: long texts' p95 10-11% and the "
        "overall p99 9-10% shorter at the same req/s, reports/translation-benchmark.md, stop "
        "40); false: every request to the least loaded lane",
    )
    decode_lane_processes: bool | None = Field(
        default=None,
        description="step-scheduled translators on CPU: each lane in a process of its own, with "
        "its own GIL (service/decode_process.py); false: lanes are threads of the server "
        "(None: processes with two lanes or more)",
    )
    decode_lane_pinning: bool = Field(
        default=False,
        description="step-scheduled translators with lanes in processes: each lane process "
        "pinned to a core of its own (lane i to the i-th core this process may use, wrapping), "
        "the server left free to run on any. Off by default: on the 2-vCPU VM pinned lanes "
        "served 1.05x in one test and 0.90x and 1.01x in two others "
        "(reports/translation-benchmark.md, stop 38)",
    )
    decode_max_cache_tokens: int = Field(
        default=16384,
        ge=1,
        description="bound on the running batch's caches: rows x (longest source + most steps)",
    )
    warmup: bool = Field(
        default=True, description="run a warm-up batch before a model reports ready"
    )
    strict_readiness: bool = Field(
        default=False,
        description="ready only when every model loaded (else: loading done, one ready)",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="on SIGTERM, wait this long for work"
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        default="none",
        description="Triton's: none reads the repository once; poll follows it (new and changed "
        "versions load without a restart); explicit changes models only through "
        "POST /v2/repository/models/<name>/load|unload",
    )
    repository_poll_secs: float = Field(
        default=15.0, gt=0, le=86_400, description="poll mode: seconds between repository scans"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            if len(key.get_secret_value()) < 8:
                raise ValueError("every API key must have at least 8 characters")
        return keys

    @field_validator("pinned_versions", mode="before")
    @classmethod
    def _parse_pins(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pins: dict[str, str] = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            name, sep, version = part.partition("=")
            if not sep:
                raise ValueError(f"expected name=version, got {part!r}")
            pins[name.strip()] = version.strip()
        return pins

    @field_validator("pinned_versions")
    @classmethod
    def _check_pins(cls, pins: dict[str, int]) -> dict[str, int]:
        for name, version in pins.items():
            if not re.match(MODEL_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a valid model name")
            if version < 1:
                raise ValueError(f"version of {name!r} must be a positive integer")
        return pins

    @field_validator("model_repository")
    @classmethod
    def _check_repository(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory")
        return path

    @model_validator(mode="after")
    def _check_across_fields(self) -> Settings:
        if self.max_queue_size < self.max_items_per_request:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be at least max_items_per_request "
                f"({self.max_items_per_request}), or a full request could never be queued"
            )
        if self.max_queue_delay_ms is not None and self.max_queue_delay_ms / 1000 >= (
            self.request_timeout_s
        ):
            raise ValueError("max_queue_delay_ms must be well below request_timeout_s")
        if (
            self.max_batch_tokens is not None
            and self.max_batch_size is not None
            and self.max_batch_tokens < self.max_batch_size
        ):
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) below max_batch_size "
                f"({self.max_batch_size}): a full batch could never fit"
            )
        return self

    def api_key_values(self) -> list[bytes]:
        return [k.get_secret_value().encode() for k in self.api_keys]


@lru_cache
def get_settings() -> Settings:
    """The process's settings from the environment (a FastAPI dependency; override in tests)."""
    # model_repository has no default: it comes from the environment or the CLI.
    return Settings()


def describe_error(error: ValidationError) -> str:
    """One readable line per bad value, naming both the env var and the CLI option."""
    lines = []
    for e in error.errors():
        loc = [str(x) for x in e["loc"]]
        if loc:
            field = loc[0]
            where = f"{ENV_PREFIX}{field.upper()} (--{field.replace('_', '-')})"
        else:
            where = "settings"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"invalid setting {where}: {msg}")
    return "\n".join(lines)
