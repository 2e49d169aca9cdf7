"""A stand-in OTLP/HTTP collector for the tracing-overhead benchmark: accepts every export.

    python -m loadtests.otlp_sink [--port 18431]

Answers each POST (e.g. /v1/traces) with 200 and an empty body and counts the bytes received,
so a traced server pays the full cost of exporting (serialising, batching, sending) while the
measurement does not depend on a real collector's speed.
"""

from __future__ import annotations

import argparse
import signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Sink(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        _Sink.received += len(self.rfile.read(int(self.headers.get("content-length", "0"))))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # one line per export: silence
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.otlp_sink", description=__doc__)
    parser.add_argument("--port", type=int, default=18431)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Sink)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends it like Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        print(f"received {_Sink.received} bytes of OTLP exports", flush=True)


if __name__ == "__main__":
    main()
