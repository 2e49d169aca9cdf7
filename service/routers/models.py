"""GET /v1/models: every model with its task, version, labels, readiness and provider."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import StateDep
from service.schemas import ERROR_RESPONSES, BatchingInfo, ModelInfo, ModelsResponse
from service.served_model import LoadedModel, batch_policy

router = APIRouter(prefix="/v1", tags=["models"], responses=ERROR_RESPONSES)


@router.get("/models", summary="List the models")
async def list_models(state: StateDep) -> ModelsResponse:
    models = []
    for m in sorted(state.registry.models(), key=lambda m: m.name):
        batching = None
        if m.config is not None:
            policy = batch_policy(m, m.config, state.settings)
            batching = BatchingInfo(
                max_batch_size=policy.max_batch_size,
                max_batch_tokens=policy.max_batch_tokens,
                max_queue_delay_ms=policy.max_queue_delay_s * 1000,
                workers=policy.max_concurrent_runs,
                scheduling="step" if isinstance(m, LoadedModel) and m.step_scheduled else "request",
            )
        models.append(
            ModelInfo(
                name=m.name,
                task=m.config.task if m.config else None,
                version=m.version_str or None,
                versions=[v.version_str for v in state.registry.versions(m.name) if v.ready],
                state=m.state.value,
                ready=m.ready,
                labels=m.config.labels if m.config else None,
                max_length=m.config.max_length if m.config else None,
                provider=m.provider,
                precision=m.manifest.get("precision"),
                batching=batching,
            )
        )
    return ModelsResponse(models=models)
