"""FastAPI dependencies: the service's typed state, request info and the API key check.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in its thread pool, a
thread hand-off per dependency per request that showed up in profiles under load. Nothing here
blocks. (For the same reason the app never sets `dependency_overrides`: while any override is
set, FastAPI re-inspects every dependency's signature on every request.)"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Receive

from service.auth import UNAUTHORIZED_MESSAGE, key_matches
from service.context import INFO_KEY, ServiceState
from service.errors import ErrorKind, ServiceError
from service.request_info import RequestInfo
from service.served_model import Disconnected


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.nlpserve
    return state


async def get_state(request: Request) -> ServiceState:
    return _state(request)


async def get_info(request: Request) -> RequestInfo:
    info = request.scope.get(INFO_KEY)
    if info is None:  # only without RequestMiddleware (never in the app)
        info = RequestInfo(request_id="-", started=asyncio.get_running_loop().time())
        request.scope[INFO_KEY] = info
    return info


StateDep = Annotated[ServiceState, Depends(get_state)]
InfoDep = Annotated[RequestInfo, Depends(get_info)]

_bearer = HTTPBearer(auto_error=False, description="an API key, when the server has any")


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When API keys are configured, the request must carry one (compared in constant time)."""
    keys = _state(request).settings.api_key_values()
    if not keys:
        return
    given = credentials.credentials.encode("latin-1") if credentials else b""
    if not key_matches(given, keys):
        raise ServiceError(ErrorKind.UNAUTHORIZED, UNAUTHORIZED_MESSAGE)


def disconnect_watcher(request: Request) -> Disconnected:
    """An awaitable factory that completes when the client goes away (after the body was read)."""
    return watch_disconnect(request.receive)


def watch_disconnect(receive: Receive) -> Disconnected:
    """`disconnect_watcher` on a bare ASGI `receive` (the task routes' fast lane has no Request)."""

    async def wait() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    return wait
