"""POST /v1/translate: translation with greedy or beam search, or streamed (Server-Sent Events)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.context import ServiceState
from service.dependencies import InfoDep, StateDep, disconnect_watcher
from service.errors import ErrorKind, ServiceError
from service.request_info import RequestInfo
from service.schemas import ERROR_RESPONSES, TranslateRequest, TranslateResponse
from service.served_model import Disconnected
from service.streaming import HEADERS, MEDIA_TYPE, TranslationStream

router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)

STREAM_EXAMPLE = (
    'event: piece\ndata: {"text": "Ein"}\n\n'
    'event: piece\ndata: {"text": " Hund rennt."}\n\n'
    'event: done\ndata: {"model": "translator", "version": "1", '
    '"translation": "Ein Hund rennt.", "tokens": 4, "truncated": false}\n\n'
)
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON; with `stream: true`, Server-Sent Events (`piece`, then `done`, or "
        "`error`)",
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}, "example": STREAM_EXAMPLE}},
    }
}


@router.post(
    "/translate",
    summary="Translate texts",
    response_model=TranslateResponse,  # the JSON answer; a stream bypasses it
    responses=STREAM_RESPONSE,
)
async def translate(
    body: TranslateRequest, request: Request, state: StateDep, info: InfoDep
) -> TranslateResponse | StreamingResponse:
    if body.stream:
        stream = await open_stream(state, body, info)
        return StreamingResponse(stream.events(), media_type=MEDIA_TYPE, headers=HEADERS)
    return await answer(state, body, info, disconnect_watcher(request))


async def open_stream(
    state: ServiceState, body: TranslateRequest, info: RequestInfo
) -> TranslationStream:
    """A streamed request admitted (every refusal raised here, before the stream starts); the
    route and the fast lane (service/fast_lane.py) send its events."""
    model = state.registry.for_task("translation", body.model, body.version)
    if len(body.texts) != 1:
        raise ServiceError(ErrorKind.VALIDATION, "streaming translates one text per request")
    return await state.inference.open_translation_stream(
        model,
        body.texts[0],
        info,
        beam_size=body.beam_size,
        max_new_tokens=body.max_new_tokens,
    )


async def answer(
    state: ServiceState, body: TranslateRequest, info: RequestInfo, disconnected: Disconnected
) -> TranslateResponse:
    """The route's answer to a request that does not stream (the fast lane,
    service/fast_lane.py, calls it too)."""
    model = state.registry.for_task("translation", body.model, body.version)
    result = await state.inference.translate(
        model,
        body.texts,
        info,
        beam_size=body.beam_size,
        max_new_tokens=body.max_new_tokens,
        disconnected=disconnected,
    )
    return TranslateResponse(
        model=result.model,
        version=result.version,
        translations=result.translations,
        truncated=result.truncated,
    )
