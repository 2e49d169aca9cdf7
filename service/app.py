"""The FastAPI application: `create_app` builds it, its lifespan loads and unloads the models.

Nothing heavy happens at import time. The lifespan starts loading the models in the background
(so liveness answers while they load and warm up; readiness turns true only after) and, in its
`finally`, drains and stops every batcher and worker thread.

Run it with `python -m service --model-repository DIR`, or with
`uvicorn --factory service.app:create_app` and settings from NLPSERVE_* environment variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp

import service
from service import grpc_server
from service.context import ServiceState
from service.dependencies import require_api_key
from service.fast_lane import FastLane
from service.http_errors import install_error_handlers
from service.inference import InferenceService
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.middleware import RequestMiddleware
from service.model_control import ModelControl
from service.registry import ModelRegistry
from service.routers import (
    classify,
    health,
    metrics,
    models,
    nli,
    playground,
    repository,
    stats,
    translate,
    v2,
)
from service.settings import Settings, get_settings
from service.tracing import Tracing, install_tracing, installed_tracing

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Text classification, natural language inference and translation served with ONNX Runtime and
dynamic batching. The task API is under `/v1`; the Open Inference Protocol (KServe V2, with the
binary tensor extension) is under `/v2`, so `tritonclient.http` works unchanged.
"""


class ServiceApp(FastAPI):
    """FastAPI with the service's middleware (`add_middleware`) in front of FastAPI's own layers
    (its ServerErrorMiddleware, telemetry and body-size middleware) instead of inside them.

    The request middleware answers every error itself, the 500 included, so those layers add
    nothing it needs; in front of it they cost every request about 0.2 ms of event-loop time on
    the dev VM (py-spy, one user), 14% of the loop's time per request with the fast lane.
    """

    def build_middleware_stack(self) -> ASGIApp:
        ours, self.user_middleware = self.user_middleware, []
        try:
            app = super().build_middleware_stack()
        finally:
            self.user_middleware = ours
        for cls, args, kwargs in reversed(ours):
            app = cls(app, *args, **kwargs)
        return app


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for `settings` (default: from the environment, via `get_settings`)."""
    settings = settings or get_settings()
    service_metrics = ServiceMetrics()
    registry = ModelRegistry(settings, service_metrics)
    service_metrics.watch_models(registry.models)
    lifecycle = Lifecycle()
    state = ServiceState(
        settings=settings,
        registry=registry,
        lifecycle=lifecycle,
        inference=InferenceService(settings, lifecycle, service_metrics),
        metrics=service_metrics,
        control=ModelControl(registry, settings),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing = installed_tracing(app)
        grpc = await grpc_server.start(state, tracing) if settings.grpc_port else None
        loading = asyncio.create_task(state.control.run(), name="load-models")
        loading.add_done_callback(_log_crash)
        try:
            yield
        finally:
            lifecycle.start_draining()
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            if grpc is not None:  # new calls are refused; let the running ones answer
                await grpc.stop(settings.drain_timeout_s)
            await registry.shutdown(settings.drain_timeout_s)
            logger.info("shut down")

    app = ServiceApp(
        title="nlpserve",
        version=service.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry (0.16x) is off: the service traces itself (service/tracing.py,
        # on its own provider), and the check whether a global provider is configured read the
        # environment on every request (~3% of the event loop's time at 32 users, py-spy; older
        # FastAPI versions keep the option as an unused extra)
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.nlpserve = state
    install_error_handlers(app)
    app.add_middleware(FastLane, state=state)  # inside the request middleware: after its checks
    app.add_middleware(RequestMiddleware, state=state)
    guarded = [Depends(require_api_key)]
    for router in (classify.router, nli.router, translate.router, models.router):
        app.include_router(router, dependencies=guarded)
    app.include_router(v2.router)
    app.include_router(v2.models_router)  # guarded in its own declaration
    app.include_router(repository.router)  # guarded in its own declaration
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(stats.router, dependencies=guarded)
    app.include_router(playground.router)
    if settings.otlp_endpoint:
        install_tracing(app, Tracing.otlp(settings.otlp_endpoint))
    return app


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("loading the models crashed", exc_info=task.exception())
