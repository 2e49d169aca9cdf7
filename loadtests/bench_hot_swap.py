"""A hot swap under load: a new model version published into the repository of a server in poll
mode while closed-loop clients keep classifying.

    python -m loadtests.bench_hot_swap --repository runs/demo/model_repository \\
        [--model sentiment] [--users 32] [--poll-secs 1] [--swaps 2] [--report FILE]

The repository is copied to a temporary directory (the original is never touched) and served
with `--model-control-mode poll`. After a warm-up under load, each swap publishes version N+1
(a copy of the served version, staged under a dot-name and renamed into place) and waits until
the repository index shows only the new version READY and the old one's memory had time to go.
Recorded: requests and failed requests (any non-200) over the whole run, seconds from publishing
to the first answer from the new version, and the server's RSS before the first swap, at its
peak, and after each swap.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from loadtests.sample_texts import REVIEW_SENTENCES
from loadtests.servers import nlpserve_command, running_server
from loadtests.tool_cli import command_line, print_report, tool_parser

PROG = "python -m loadtests.bench_hot_swap"

RELEASE_WAIT_S = 5.0  # after the index shows the swap: the old version's grace and drain


@dataclass
class Load:
    answers: int = 0
    failures: list[str] = field(default_factory=list)
    first_seen: dict[str, float] = field(default_factory=dict)  # version -> first answer time


async def closed_loop(url: str, model: str, users: int, load: Load, stop: asyncio.Event) -> None:
    texts = itertools.cycle(REVIEW_SENTENCES)
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def user() -> None:
            while not stop.is_set():
                body = {"texts": [next(texts)], "model": model}
                try:
                    response = await client.post("/v1/classify", json=body)
                except httpx.HTTPError as e:
                    load.failures.append(repr(e))
                    continue
                if response.status_code != 200:
                    load.failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                load.answers += 1
                load.first_seen.setdefault(response.json()["version"], time.monotonic())

        await asyncio.gather(*(user() for _ in range(users)))


async def wait_for_only(url: str, model: str, version: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            index = (await client.post("/v2/repository/index")).json()
            served = [e for e in index if e["name"] == model]
            if served == [{"name": model, "version": version, "state": "READY"}]:
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{model} version {version} did not become the only one served")


async def run(args: argparse.Namespace, repository: Path) -> list[str]:
    model_dir = repository / args.model
    command = [
        *nlpserve_command(repository),
        "--model-control-mode", "poll",
        "--repository-poll-secs", str(args.poll_secs),
    ]  # fmt: skip
    lines = []
    with running_server(command) as (url, process):
        server = psutil.Process(process.pid)
        load, stop = Load(), asyncio.Event()
        clients = asyncio.create_task(closed_loop(url, args.model, args.users, load, stop))
        await asyncio.sleep(args.warmup_seconds)
        rss_before = server.memory_info().rss
        peak = rss_before
        version = max(int(p.name) for p in model_dir.iterdir() if p.name.isdecimal())
        for _ in range(args.swaps):
            new = version + 1
            staging = model_dir / f".staging-{new}"
            shutil.copytree(model_dir / str(version), staging)
            published = time.monotonic()
            staging.rename(model_dir / str(new))
            waiting = asyncio.create_task(wait_for_only(url, args.model, str(new)))
            while not waiting.done():
                peak = max(peak, server.memory_info().rss)
                await asyncio.sleep(0.1)
            await waiting
            while str(new) not in load.first_seen:  # the index turns before answers arrive
                await asyncio.sleep(0.05)
            switched = load.first_seen[str(new)] - published
            await asyncio.sleep(RELEASE_WAIT_S)
            rss = server.memory_info().rss
            peak = max(peak, rss)
            lines.append(
                f"| {version} -> {new} | {switched:.2f} | {rss / 2**20:.0f} | "
                f"{(rss / rss_before - 1) * 100:+.1f}% |"
            )
            version = new
        stop.set()
        await clients
    return [
        f"Requests answered: {load.answers}; failed: {len(load.failures)}"
        + (f" (first: {load.failures[0]})" if load.failures else ""),
        f"RSS before the first swap: {rss_before / 2**20:.0f} MiB; "
        f"peak during swaps: {peak / 2**20:.0f} MiB",
        "",
        "| swap | s from publish to first answer of the new version | RSS after, MiB | vs before |",
        "|---|---|---|---|",
        *lines,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(PROG, warmup_seconds=10.0)
    parser.add_argument("--poll-secs", type=float, default=1.0)
    parser.add_argument("--swaps", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hot-swap-") as tmp:
        repository = Path(tmp) / "repository"
        repository.mkdir()
        shutil.copytree(args.repository / args.model, repository / args.model)
        body = asyncio.run(run(args, repository))
    lines = [
        command_line(PROG, argv),
        "",
        f"Model {args.model}, {args.users} closed-loop clients on /v1/classify (one text per "
        f"request), poll mode every {args.poll_secs:g} s; {platform.machine()}, client and "
        "server on the same machine.",
        "",
        *body,
    ]
    print_report(lines, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
