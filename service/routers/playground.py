"""GET /: the playground, a page to try every model and watch the live numbers.

Plain files shipped in the package (service/playground/): no build step, nothing fetched from
the internet, so it works on an offline cluster. Not behind the API keys: the page holds no data;
the key typed into it goes with each API call.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(tags=["playground"], include_in_schema=False)

_MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


@lru_cache(maxsize=len(_MEDIA_TYPES))
def _asset(name: str) -> bytes:
    return (resources.files("service") / "playground" / name).read_bytes()


def _send(name: str) -> Response:
    # no-cache: revalidate on every load, so a restarted server's new page is what people see
    return Response(
        _asset(name), media_type=_MEDIA_TYPES[name], headers={"cache-control": "no-cache"}
    )


@router.get("/")
async def page() -> Response:
    return _send("index.html")


@router.get("/playground/{name}")
async def asset(name: str) -> Response:
    if name not in _MEDIA_TYPES or name == "index.html":
        raise HTTPException(404, f"no playground file {name[:64]!r}")
    return _send(name)
