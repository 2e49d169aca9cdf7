"""Request and response bodies of the HTTP API (what /docs shows).

Requests are strict (no type coercion, unknown fields refused) so a client's mistake is named
rather than silently reinterpreted. Limits that depend on settings (items per request, characters
per text) are checked by the inference path, not here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.inference import ClassificationResult
from service.limits import MAX_BEAM_SIZE, MAX_NEW_TOKENS

STRICT = ConfigDict(strict=True, extra="forbid")

ModelName = Field(
    default=None,
    description="model name; may be left out when exactly one model serves the task",
)
ModelVersion = Field(
    default=None,
    description="model version to use (a version serving side by side); default: the highest",
)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"texts": ["A wonderful film.", "Dull and far too long."]}]
        },
    )

    texts: list[str] = Field(min_length=1, description="texts to classify")
    model: str | None = ModelName
    version: str | None = ModelVersion


class Pair(BaseModel):
    model_config = STRICT

    premise: str
    hypothesis: str


class NliRequest(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "pairs": [
                        {"premise": "A man plays a guitar.", "hypothesis": "A person makes music."}
                    ]
                }
            ]
        },
    )

    pairs: list[Pair] = Field(min_length=1, description="premise/hypothesis pairs")
    model: str | None = ModelName
    version: str | None = ModelVersion


class TranslateRequest(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"texts": ["A dog runs through the park."], "beam_size": 4}]
        },
    )

    texts: list[str] = Field(min_length=1, description="source texts")
    model: str | None = ModelName
    version: str | None = ModelVersion
    beam_size: int | None = Field(
        default=None, ge=1, le=MAX_BEAM_SIZE, description="1 = greedy; default: the model's"
    )
    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_NEW_TOKENS,
        description="default: the model's generation.max_new_tokens",
    )
    stream: bool = Field(
        default=False,
        description="answer Server-Sent Events as the translation decodes: `piece` events "
        "(whole words), then `done` with the whole translation and its token count; one text, "
        "greedy search only (beam_size left out or 1)",
    )


class ClassResult(BaseModel):
    label: str
    score: float = Field(description="probability of the label")
    scores: dict[str, float] = Field(description="probability of every label")


class TaskResponse(BaseModel):
    """What every task answer starts with: the model and version that answered."""

    model: str
    version: str


Truncated = Field(
    description="indices of inputs longer than the model's max_length, which were truncated"
)


class ClassifyResponse(TaskResponse):
    results: list[ClassResult]
    truncated: list[int] = Truncated

    @classmethod
    def from_result(cls, result: ClassificationResult) -> ClassifyResponse:
        # model_construct: the fields are the service's own, already of their types; validating
        # them again cost ~4% of the event loop's time per request
        results = []
        for (label, score), probabilities in zip(result.best, result.probabilities, strict=True):
            scores = dict(zip(result.labels, probabilities.tolist(), strict=True))
            results.append(ClassResult.model_construct(label=label, score=score, scores=scores))
        return cls.model_construct(
            model=result.model, version=result.version, results=results, truncated=result.truncated
        )


class TranslateResponse(TaskResponse):
    translations: list[str]
    truncated: list[int] = Truncated


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_batch_tokens: int
    max_queue_delay_ms: float
    workers: int = Field(description="engine runs in flight at once (NLPSERVE_WORKERS_PER_MODEL)")
    scheduling: Literal["request", "step"] = Field(
        default="request",
        description="step: a translator's sequences join and leave the running decode batch at "
        "every step (the batch limits above do not apply; NLPSERVE_DECODE_* do)",
    )


class ModelInfo(BaseModel):
    name: str
    task: str | None
    version: str | None = Field(description="the default version (the highest ready one)")
    versions: list[str] = Field(
        default_factory=list, description="every version serving side by side (version policy)"
    )
    state: Literal["loading", "ready", "failed"]
    ready: bool
    labels: list[str] | None = None
    max_length: int | None = None
    provider: str | None = Field(default=None, description="ONNX Runtime execution provider")
    precision: str | None = None
    batching: BatchingInfo | None = None


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong, for a person to read")
    type: str | None = Field(default=None, description="error kind (task API only)")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "API key missing or wrong",
        404: "unknown model",
        413: "over a request limit (the message names it)",
        422: "invalid request",
        429: "model queue full; retry after Retry-After seconds",
        503: "model not ready, or the server is shutting down",
        504: "request timed out",
    }.items()
}


# --------------------------------------------------------------- Open Inference Protocol (docs)


class V2Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2Tensor]
    outputs: list[V2Tensor]


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2InferOutput]
