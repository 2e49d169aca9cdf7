"""Locust users for nlpserve: one per task route plus one speaking the Open Inference Protocol (V2).

Run headless through `python -m loadtests.run` (CSV + HTML + plot), or directly:

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 ClassifyUser V2InferUser

Every failure is reported with a canonical message so the SLO check can sort them:
"HTTP <code>: <body>" for an error status, "connection error: <exception>" when no HTTP answer
came back (refused, reset, timed out), "bad response: <why>" for a 200 with the wrong shape.
"""

from __future__ import annotations

import csv
import functools
import random
from collections.abc import Callable
from typing import Any

from locust import FastHttpUser, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from loadtests.payloads import Payloads, load_payloads, resolve_data_dir


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("nlpserve")
    group.add_argument(
        "--data-dir",
        default="",
        env_var="NLPSERVE_LOADTEST_DATA",
        help="dataset directory (../shared/data layout), or 'bundled' for the bundled sample "
        "texts; default: ../shared/data when it exists, else the bundled texts",
    )
    group.add_argument(
        "--items-per-request", type=int, default=1, help="texts (or pairs) per request"
    )
    group.add_argument(
        "--think-time",
        default="0",
        help="seconds a user waits between requests: '0' (closed loop, measures "
        "capacity) or 'MIN-MAX' for a uniform random wait",
    )
    group.add_argument("--classify-model", default="sentiment")
    group.add_argument("--nli-model", default="nli")
    group.add_argument("--translate-model", default="translator")
    group.add_argument("--v2-model", default="sentiment", help="a text-classification model")
    group.add_argument("--beam-size", type=int, default=4)
    group.add_argument("--max-new-tokens", type=int, default=64)
    group.add_argument(
        "--api-key",
        default="",
        env_var="NLPSERVE_LOADTEST_API_KEY",
        help="sent as 'Authorization: Bearer KEY' when set",
    )


# Suffix of the complete CSV files written at test stop (see _write_final_csv).
FINAL_SUFFIX = ".final"


@events.test_stop.add_listener
def _write_final_csv(environment: Environment, **_kwargs: Any) -> None:
    """Write PREFIX_{stats,failures,exceptions}.final.csv once every user has stopped.

    Locust's --csv files are rewritten once a second while it runs and not again at the end, so
    they miss the last second and the requests finished during --stop-timeout (test_stop fires
    after the users stopped). These files hold
    the same columns (Locust's own StatsCSV writer) with every request counted;
    loadtests.run moves them over the periodic ones.
    """
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for kind, write in (
        ("stats", writer.requests_csv),
        ("failures", writer.failures_csv),
        ("exceptions", writer.exceptions_csv),
    ):
        with open(f"{prefix}_{kind}{FINAL_SUFFIX}.csv", "w", newline="", encoding="utf-8") as f:
            write(csv.writer(f))


@functools.cache
def _payloads(data_dir: str) -> Payloads:
    # One pool per process, shared by all users; built at test start, not at import.
    return load_payloads(resolve_data_dir(data_dir))


@events.test_start.add_listener
def _build_payloads(environment: Environment, **_kwargs: Any) -> None:
    # Before the first user starts: reading the data must not stall the first requests.
    if environment.parsed_options is not None:  # None when run as a library, not the CLI
        _payloads(environment.parsed_options.data_dir)


def _parse_think_time(spec: str) -> tuple[float, float]:
    low, _, high = spec.partition("-")
    return float(low), float(high or low)


def _check(response: ResponseContextManager, validate: Callable[[Any], str | None]) -> None:
    """Mark the response as a failure with a canonical message, or leave it a success."""
    if response.status_code == 0:  # no HTTP answer at all (Locust's ErrorResponse)
        response.failure(f"connection error: {getattr(response, 'error', None)!r}")
    elif response.status_code >= 400:
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
    else:
        try:
            problem = validate(response.json())
        except ValueError as e:  # not JSON
            problem = f"body is not JSON ({e})"
        if problem:
            response.failure(f"bad response: {problem}")
        else:
            response.success()


class NlpserveUser(FastHttpUser):
    """Shared plumbing: options, payload pools, auth header, think time."""

    abstract = True

    def wait_time(self) -> float:
        low, high = _parse_think_time(self.options.think_time)
        return random.uniform(low, high)

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    @property
    def payloads(self) -> Payloads:
        return _payloads(self.options.data_dir)

    @property
    def headers(self) -> dict[str, str]:
        key = self.options.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def draw(self, pool: list[Any]) -> list[Any]:
        return random.choices(pool, k=self.options.items_per_request)

    def post(self, path: str, body: dict[str, Any], validate: Callable[[Any], str | None]) -> None:
        with self.client.post(
            path, json=body, headers=self.headers, name=path, catch_response=True
        ) as response:
            _check(response, validate)


def _expect_results(n: int) -> Callable[[Any], str | None]:
    def validate(body: Any) -> str | None:
        results = body.get("results")
        if not isinstance(results, list) or len(results) != n:
            return f"expected {n} results, got {results!r:.100}"
        if not all("label" in r and "score" in r for r in results):
            return "a result lacks label/score"
        return None

    return validate


class ClassifyUser(NlpserveUser):
    """POST /v1/classify with length-mixed review texts."""

    weight = 4  # the bulk of production traffic: cheap single-sentence classification

    @task
    def classify(self) -> None:
        texts = self.draw(self.payloads.texts)
        body = {"texts": texts, "model": self.options.classify_model}
        self.post("/v1/classify", body, _expect_results(len(texts)))


class NliUser(NlpserveUser):
    """POST /v1/nli with SNLI/MultiNLI premise-hypothesis pairs."""

    weight = 2

    @task
    def nli(self) -> None:
        pairs = self.draw(self.payloads.pairs)
        body = {
            "pairs": [{"premise": p, "hypothesis": h} for p, h in pairs],
            "model": self.options.nli_model,
        }
        self.post("/v1/nli", body, _expect_results(len(pairs)))


class TranslateUser(NlpserveUser):
    """POST /v1/translate with Multi30k captions (beam search)."""

    weight = 1  # autoregressive decoding is the most expensive route per request

    @task
    def translate(self) -> None:
        texts = self.draw(self.payloads.sources)
        body = {
            "texts": texts,
            "model": self.options.translate_model,
            "beam_size": self.options.beam_size,
            "max_new_tokens": self.options.max_new_tokens,
        }

        def validate(answer: Any) -> str | None:
            translations = answer.get("translations")
            if not isinstance(translations, list) or len(translations) != len(texts):
                return f"expected {len(texts)} translations, got {translations!r:.100}"
            return None

        self.post("/v1/translate", body, validate)


class V2InferUser(NlpserveUser):
    """POST /v2/models/{model}/infer: what tritonclient.http and KServe clients send."""

    weight = 1

    @task
    def infer(self) -> None:
        texts = self.draw(self.payloads.texts)
        body = {
            "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
        }

        def validate(answer: Any) -> str | None:
            outputs = {o.get("name"): o for o in answer.get("outputs", [])}
            if "label" not in outputs or "probabilities" not in outputs:
                return f"outputs {sorted(outputs)} lack label/probabilities"
            if outputs["label"].get("shape") != [len(texts)]:
                return f"label shape {outputs['label'].get('shape')} != [{len(texts)}]"
            return None

        self.post(f"/v2/models/{self.options.v2_model}/infer", body, validate)
