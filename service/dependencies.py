"""FastAPI dependencies: the service's typed state, settings, request info and the API key check."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.context import RequestInfo
from service.errors import ErrorKind, ServiceError
from service.inference import Disconnected, InferenceService
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.middleware import INFO_KEY
from service.registry import ModelRegistry
from service.settings import Settings, get_settings


@dataclass(frozen=True)
class ServiceState:
    """Everything the routes use, built once per app by `create_app`."""

    settings: Settings
    registry: ModelRegistry
    lifecycle: Lifecycle
    inference: InferenceService
    metrics: ServiceMetrics


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.nlpserve
    return state


def get_inference(request: Request) -> InferenceService:
    return get_state(request).inference


def get_info(request: Request) -> RequestInfo:
    info = request.scope.get(INFO_KEY)
    if info is None:  # only without RequestMiddleware (never in the app)
        info = RequestInfo(request_id="-", started=asyncio.get_running_loop().time())
        request.scope[INFO_KEY] = info
    return info


StateDep = Annotated[ServiceState, Depends(get_state)]
InferenceDep = Annotated[InferenceService, Depends(get_inference)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
InfoDep = Annotated[RequestInfo, Depends(get_info)]

_bearer = HTTPBearer(auto_error=False, description="an API key, when the server has any")


def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When API keys are configured, the request must carry one (compared in constant time)."""
    keys = get_state(request).settings.api_key_values()
    if not keys:
        return
    given = credentials.credentials.encode() if credentials else b""
    matched = False
    for key in keys:  # no early exit: the time does not depend on which key matched
        matched |= hmac.compare_digest(given, key)
    if not matched:
        raise ServiceError(
            ErrorKind.UNAUTHORIZED, "a valid API key is required (Authorization: Bearer <key>)"
        )


def disconnect_watcher(request: Request) -> Disconnected:
    """An awaitable factory that completes when the client goes away (after the body was read)."""

    async def wait() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return wait
