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

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.grpc_server import port_problem
from service.lifecycle import Lifecycle
from service.logs import configure_logging
from service.settings import ENV_PREFIX, Settings, describe_error

logger = logging.getLogger("service")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the models of a model repository over HTTP.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"{ENV_PREFIX}{name.upper()}"
        help_text = f"{field.description or ''} (env {env})".strip()
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


# After the listener closed: long enough for a client that connected just before to send its
# request (loopback or a pod network), short next to terminationGracePeriodSeconds.
LAST_CONNECTIONS_GRACE_S = 0.2


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
        if self._drain is None:
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
        # Stop listening first, then give connections accepted before that a moment to deliver
        # their request and get its 503: uvicorn's own shutdown closes every connection that has
        # no request in progress, which a client that already sent one sees as a dropped
        # connection instead of an answer.
        for server in getattr(self, "servers", []):
            server.close()
        await asyncio.sleep(LAST_CONNECTIONS_GRACE_S)  # draining: they can only get 503s
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
    )
    server = DrainingServer(config, app.state.nlpserve.lifecycle, settings.drain_timeout_s)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
