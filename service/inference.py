"""The one "run inference" path every route uses (task API and Open Inference Protocol alike).

For a request on a model (the registry resolved it) it: refuses work while draining or before the
model is ready, applies the request limits, tokenizes (reporting truncation), then runs the
sequences on the model (`LoadedModel.run`: its queue, its engine) and assembles the answer. Every
refusal is a ServiceError and is counted by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service.decode_lanes import DecodeLanes
from service.decode_scheduler import DecodeScheduler
from service.engines import ClassifierEngine, DecodingParams, Encoded, TranslatorEngine
from service.errors import ErrorKind, ServiceError
from service.lifecycle import Lifecycle
from service.limits import MAX_BEAM_SIZE, MAX_NEW_TOKENS
from service.metrics import ServiceMetrics
from service.request_info import RequestInfo
from service.served_model import Disconnected, LoadedModel, ModelState, ServedModel
from service.settings import Settings
from service.stats import RequestTiming
from service.streaming import TranslationStream
from service.text_checks import unencodable
from service.tracing import mark_admission, mark_stream, mark_tokenization

logger = logging.getLogger(__name__)

E = TypeVar("E", ClassifierEngine, TranslatorEngine)

TOKENIZE_INLINE_CHARS = 20_000  # ~1 ms of tokenization; above it, tokenize in a thread


@dataclass(frozen=True)
class ClassificationResult:
    model: str
    version: str
    labels: list[str]
    probabilities: list[np.ndarray]  # float32 [labels] per input
    best: list[tuple[str, float]]  # the most probable label and its probability, per input
    truncated: list[int]  # indices of inputs cut to max_length


@dataclass(frozen=True)
class TranslationResult:
    model: str
    version: str
    translations: list[str]
    truncated: list[int]


class InferenceService:
    def __init__(self, settings: Settings, lifecycle: Lifecycle, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.metrics = metrics

    # ------------------------------------------------------------------ the tasks

    async def classify(
        self,
        model: ServedModel,
        texts: Sequence[str],
        info: RequestInfo,
        disconnected: Disconnected | None = None,
    ) -> ClassificationResult:
        return await self._classification(
            model, texts, texts, lambda i: f"texts[{i}]", info, disconnected, pairs=False
        )

    async def nli(
        self,
        model: ServedModel,
        pairs: Sequence[tuple[str, str]],
        info: RequestInfo,
        disconnected: Disconnected | None = None,
    ) -> ClassificationResult:
        return await self._classification(
            model,
            pairs,
            [text for pair in pairs for text in pair],
            lambda i: f"pairs[{i // 2}].{('premise', 'hypothesis')[i % 2]}",
            info,
            disconnected,
            pairs=True,
        )

    async def _classification(
        self,
        model: ServedModel,
        inputs: Sequence[Any],
        texts: Sequence[str],
        where: Callable[[int], str],
        info: RequestInfo,
        disconnected: Disconnected | None,
        *,
        pairs: bool,
    ) -> ClassificationResult:
        """classify and nli: `inputs` are texts or (premise, hypothesis) pairs, `texts` every
        text in them for the limits, `where(i)` names text i for the client."""
        with self._counted(model, info) as timing:
            loaded, engine = self._admit(model, ClassifierEngine)
            self._check_texts(texts, where, items=len(inputs) if pairs else None)
            encode = engine.encoder.encode_pairs if pairs else engine.encoder.encode
            with timing.phase("compute_input"):
                encoded = await self._tokenize(loaded, encode, inputs)
            probabilities = await self._run(loaded, encoded, None, info, disconnected, timing)
            with timing.phase("compute_output"):
                return ClassificationResult(
                    loaded.name,
                    loaded.version_str,
                    engine.labels,
                    probabilities,
                    _best(engine.labels, probabilities),
                    self._truncated(loaded, encoded),
                )

    async def translate(
        self,
        model: ServedModel,
        texts: Sequence[str],
        info: RequestInfo,
        *,
        beam_size: int | None = None,
        max_new_tokens: int | None = None,
        disconnected: Disconnected | None = None,
    ) -> TranslationResult:
        with self._counted(model, info) as timing:
            loaded, engine = self._admit(model, TranslatorEngine)
            params = decoding_params(engine.default_params(), beam_size, max_new_tokens)
            self._check_texts(texts, lambda i: f"texts[{i}]")
            with timing.phase("compute_input"):
                encoded = await self._tokenize(loaded, engine.encoder.encode, texts)
            translations = await self._run(loaded, encoded, params, info, disconnected, timing)
            with timing.phase("compute_output"):
                return TranslationResult(
                    loaded.name,
                    loaded.version_str,
                    translations,
                    self._truncated(loaded, encoded),
                )

    async def open_translation_stream(
        self,
        model: ServedModel,
        text: str,
        info: RequestInfo,
        *,
        beam_size: int | None = None,
        max_new_tokens: int | None = None,
    ) -> TranslationStream:
        """Admit one greedy sequence for streaming (service/streaming.py); every refusal is
        raised here, before the stream starts. The stream holds the drain open until it ends.

        The response's headers leave before the sequence joins a decode step: the request's
        batch size (the rows of the step it joined) is set for its log line when the sequence
        or the stream ends, and its trace's steps are built at the end of the stream."""
        info.streamed = True
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._counted(model, info))
            loaded, engine = self._admit(model, TranslatorEngine)
            if beam_size not in (None, 1):
                raise ServiceError(
                    ErrorKind.VALIDATION,
                    "streaming is greedy search only: leave beam_size out or set it to 1",
                )
            scheduler = loaded.batcher
            if not isinstance(scheduler, DecodeScheduler | DecodeLanes):
                raise ServiceError(
                    ErrorKind.UNSUPPORTED,
                    f"model {model.name!r} is not decoded step by step; streaming needs "
                    "translation_batching=step and a decoder exported for it",
                )
            params = decoding_params(engine.default_params(), 1, max_new_tokens)
            self._check_texts([text], lambda i: f"texts[{i}]")
            (encoded,) = await self._tokenize(loaded, engine.encoder.encode, [text])
            self._refuse_truncated([encoded], loaded)
            stream = TranslationStream(
                model=loaded.name,
                version=loaded.version_str,
                engine=engine,
                truncated=bool(self._truncated(loaded, [encoded])),
                deadline=info.started + self.settings.request_timeout_s,
            )
            (item,) = scheduler.submit(
                [encoded],
                key=params,
                timeout_s=self._remaining(info, loaded),
                on_token=stream.on_token,
            )
            stream.attach(item)
            mark_stream(stream)
            stack.callback(_log_batch_size, info, stream)  # before the counting ends
            stream.closer = stack.pop_all()
            # Released when the sequence ends, even if the stream is never iterated (a client
            # gone before the response started); the stream's own end releases it too.
            item.future.add_done_callback(lambda _: stream.closer.close())
            return stream
        raise AssertionError("unreachable")  # mypy: the with block returns or raises

    # ------------------------------------------------------------------ the shared steps

    @contextlib.contextmanager
    def _counted(self, model: ServedModel, info: RequestInfo) -> Iterator[RequestTiming]:
        """Count refusals by reason, hold the drain open while accepted work runs, and record
        the request in the model version's statistics."""
        info.model = model.name
        mark_admission()
        accepted = False
        timing = RequestTiming()
        ok = False
        try:
            if self.lifecycle.draining:
                raise ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down")
            self.lifecycle.work_started()
            accepted = True
            yield timing
            ok = True
        except ServiceError as e:
            self.metrics.rejected.labels(model.name, e.kind.value).inc()
            raise
        finally:
            if isinstance(model, LoadedModel):
                model.stats.record(timing, ok)
            if accepted:
                self.lifecycle.work_finished()

    def _admit(self, model: ServedModel, engine_type: type[E]) -> tuple[LoadedModel, E]:
        """The model, if it serves, and its engine, if that engine does this task."""
        if model.state is ModelState.LOADING:
            raise ServiceError(ErrorKind.NOT_READY, f"model {model.name!r} is still loading")
        if model.state is ModelState.RETIRED:
            raise ServiceError(
                ErrorKind.NOT_READY,
                f"model {model.name!r} version {model.version_str} is no longer served; retry",
            )
        if not isinstance(model, LoadedModel):
            raise ServiceError(
                ErrorKind.NOT_READY, f"model {model.name!r} failed to load (see the server log)"
            )
        if not isinstance(model.engine, engine_type):
            raise ServiceError(ErrorKind.VALIDATION, f"model {model.name!r} cannot do this task")
        return model, model.engine

    def _check_texts(
        self, texts: Sequence[str], where: Callable[[int], str], items: int | None = None
    ) -> None:
        """The request limits, and text a tokenizer can take: `where(i)` names text i for the
        client (`texts[3]`, `pairs[1].hypothesis`)."""
        n = len(texts) if items is None else items
        limit = self.settings.max_items_per_request
        if n == 0:
            raise ServiceError(ErrorKind.VALIDATION, "the request holds no inputs")
        if n > limit:
            raise ServiceError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"the request holds {n} inputs; max_items_per_request is {limit}",
            )
        max_chars = self.settings.max_text_chars
        for i, text in enumerate(texts):
            if len(text) > max_chars:
                raise ServiceError(
                    ErrorKind.PAYLOAD_TOO_LARGE,
                    f"{where(i)} has {len(text)} characters; max_text_chars is {max_chars}",
                )
            problem = unencodable(text)
            if problem:
                raise ServiceError(ErrorKind.VALIDATION, f"{where(i)}: {problem}")

    async def _tokenize(
        self, model: LoadedModel, encode: Callable[[Any], list[Encoded]], inputs: Any
    ) -> list[Encoded]:
        started = time.monotonic()  # the batcher's clock too: one time line for the trace
        encoded = await _off_loop_if_large(encode, inputs)
        ended = time.monotonic()
        self.metrics.tokenization_seconds.labels(model.name).observe(ended - started)
        mark_tokenization(started, ended)
        self.metrics.tokens.labels(model.name).inc(sum(e.tokens for e in encoded))
        return encoded

    def _truncated(self, model: LoadedModel, encoded: Sequence[Encoded]) -> list[int]:
        cut = [i for i, e in enumerate(encoded) if e.truncated]
        if cut:
            self.metrics.truncated.labels(model.name).inc(len(cut))
        return cut

    def _refuse_truncated(self, encoded: Sequence[Encoded], model: LoadedModel) -> None:
        """With truncation disabled, an input over the model's max_length is refused."""
        if self.settings.truncate:
            return
        for i, e in enumerate(encoded):
            if e.truncated:
                raise ServiceError(
                    ErrorKind.VALIDATION,
                    f"input {i} is longer than the model's max_length "
                    f"({model.config.max_length} tokens) and truncation is disabled",
                )

    def _remaining(self, info: RequestInfo, model: LoadedModel) -> float:
        """Seconds left of the request's deadline; none left: not accepted (OVERLOADED)."""
        timeout = self.settings.request_timeout_s
        remaining = info.started + timeout - asyncio.get_running_loop().time()
        if remaining <= 0:  # the server was too busy to get this far in time
            raise ServiceError(
                ErrorKind.OVERLOADED,
                f"the server is overloaded: the request spent its request_timeout_s ({timeout:g} "
                "s) before it could be queued; retry later",
                retry_after=model.batcher.retry_after_s(),
            )
        return remaining

    async def _run(
        self,
        model: LoadedModel,
        encoded: list[Encoded],
        key: Hashable,
        info: RequestInfo,
        disconnected: Disconnected | None,
        timing: RequestTiming,
    ) -> list[Any]:
        self._refuse_truncated(encoded, model)
        results = await model.run(
            encoded,
            key,
            remaining_s=self._remaining(info, model),
            timeout_s=self.settings.request_timeout_s,
            disconnected=disconnected,
        )
        info.batch_size = results.batch_size
        timing.engine(results.enqueued_at, results.run_started, time.monotonic())
        return results.values


def _log_batch_size(info: RequestInfo, stream: TranslationStream) -> None:
    """A stream's batch size for its log line: the rows of the decode step its sequence joined
    (None if it never joined), as for a translation answered whole."""
    info.batch_size = stream.rows_at_join or None


def _best(labels: list[str], probabilities: list[np.ndarray]) -> list[tuple[str, float]]:
    """The most probable label and its probability, per input. The array's own argmax: the
    `np.argmax` wrapper's dispatch, or stacking the rows first, cost more than the argmax on
    the one or few rows a request has (py-spy, 2-5% of the loop's time per request)."""
    best = []
    for row in probabilities:
        k = int(row.argmax())
        best.append((labels[k], float(row[k])))
    return best


async def _off_loop_if_large(encode: Callable[[Any], list[Encoded]], inputs: Any) -> list[Encoded]:
    """Tokenize on the event loop when cheap; a large request goes to a thread so it does not
    stall every other request (`tokenizers` releases the GIL)."""
    chars = sum(len(x) if isinstance(x, str) else len(x[0]) + len(x[1]) for x in inputs)
    if chars <= TOKENIZE_INLINE_CHARS:
        return encode(inputs)
    return await asyncio.to_thread(encode, inputs)


def decoding_params(
    defaults: DecodingParams, beam_size: int | None, max_new_tokens: int | None
) -> DecodingParams:
    beam = defaults.beam_size if beam_size is None else beam_size
    new = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
    if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= MAX_BEAM_SIZE:
        raise ServiceError(
            ErrorKind.VALIDATION, f"beam_size must be an integer from 1 to {MAX_BEAM_SIZE}"
        )
    if isinstance(new, bool) or not isinstance(new, int) or not 1 <= new <= MAX_NEW_TOKENS:
        raise ServiceError(
            ErrorKind.VALIDATION, f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}"
        )
    return DecodingParams(beam, new)
