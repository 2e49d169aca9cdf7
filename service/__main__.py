"""`python -m service --model-repository DIR [--host 127.0.0.1] [--port 8000] ...`

Every Settings field is an option here and an environment variable `NLPSERVE_<FIELD>`; options
win over the environment. Bad values stop the process with one line per problem (exit code 2).

SIGTERM drains: readiness turns false and new work answers 503 at once, accepted requests (queued
or running) finish, then the server stops. A second SIGTERM, or SIGINT, stops without waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Literal, get_args, get_origin

import uvicorn
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from service.app import create_app
from service.connections import ConnectionLimits, limited_protocol
from service.grpc_server import port_problem
from service.lifecycle import Lifecycle
from service.logs import configure_logging
from service.settings import ENV_PREFIX, Settings, describe_error

logger = logging.getLogger("service")


def _default_and_choices(field: FieldInfo) -> str:
    """ "one of a|b; default: x; " for an option's help. argparse's own default stays SUPPRESS so
    that an unset option leaves the environment variable in charge."""
    parts = []
    if get_origin(field.annotation) is Literal:
        parts.append("one of " + "|".join(str(v) for v in get_args(field.annotation)))
    if field.default_factory is not None and not field.default_factory_takes_validated_data:
        parts.append(f"default: {field.default_factory()}")  # type: ignore[call-arg]
    elif field.is_required():
        parts.append("required")
    elif field.default is not None:
        parts.append(f"default: {field.default}")
    return "".join(part + "; " for part in parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the models of a model repository over HTTP.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"{ENV_PREFIX}{name.upper()}"
        help_text = f"{field.description or ''} ({_default_and_choices(field)}env {env})".strip()
        help_text = help_text.replace("%", "%%")  # argparse formats help with %: a "10%" is text
        if field.annotation is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text
            )
    return parser


# After the drain, open connections get this long to deliver a request and read its answer
# with `Connection: close` before the process closes the rest. Short next to
# terminationGracePeriodSeconds; idle pooled connections are what usually remain at its end.
LAST_CONNECTIONS_GRACE_S = 2.0


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains before the usual graceful stop."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_timeout_s: float):
        super().__init__(config)
        self._lifecycle = lifecycle
        self._drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain is None and self._loop and not self.should_exit:
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._drain is not None:
            return
        # Stop listening first, in this same callback: from now on a new connection is refused,
        # a clean outcome any client can retry elsewhere (in Kubernetes the preStop sleep has
        # already taken the pod out of the Service). Responses from here on carry `Connection:
        # close`; a listener still open when they go out invites the clients to reconnect at
        # once, and whatever the kernel queued when the listener finally closes is reset after
        # the client sent its request.
        for server in getattr(self, "servers", []):
            server.close()
        self._lifecycle.start_draining()
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        if await self._lifecycle.wait_idle(self._drain_timeout_s):
            logger.info("drained: every accepted request was answered; stopping")
        else:
            logger.warning(
                "drain_timeout_s (%.1f s) passed with %d requests unanswered; stopping",
                self._drain_timeout_s,
                self._lifecycle.accepted,
            )
        # Open connections get a moment to deliver a request in transit and read its answer
        # (every response now carries `Connection: close`, after which uvicorn closes them):
        # uvicorn's own shutdown closes each connection with no request in progress, which a
        # client sending on it right then sees as a dropped request.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LAST_CONNECTIONS_GRACE_S
        while self.server_state.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        self.should_exit = True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings(**vars(args))
    except ValidationError as e:
        print(f"nlpserve: {describe_error(e)}", file=sys.stderr)
        return 2
    problem = settings.grpc_port and port_problem(settings.host, settings.grpc_port)
    if problem:
        print(f"nlpserve: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # configure_logging already routed uvicorn's loggers
        access_log=False,  # the request middleware writes one structured line per request
        lifespan="on",
        http=limited_protocol(
            ConnectionLimits(
                header_timeout_s=settings.header_timeout_s,
                max_header_bytes=settings.max_header_bytes,
                max_connections=settings.max_connections,
            )
        ),
        # Annotated int, used as a float (loop.call_later): fractions of a second work.
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
    )
    server = DrainingServer(config, app.state.nlpserve.lifecycle, settings.drain_timeout_s)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
