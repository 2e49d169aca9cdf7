"""The one "run inference" path every route uses (task API and Open Inference Protocol alike).

For a request it: resolves the model, refuses work while draining or before the model is ready,
applies the request limits, tokenizes (reporting truncation), queues the sequences in the model's
batcher and waits for all of them, the request's deadline, or the client going away, whichever
comes first. Every refusal is a ServiceError and is counted by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.decode_scheduler import DecodeScheduler
from service.engines import ClassifierEngine, DecodingParams, Encoded, TranslatorEngine
from service.errors import ErrorKind, ServiceError, shorten
from service.lifecycle import Lifecycle
from service.limits import MAX_BEAM_SIZE, MAX_NEW_TOKENS
from service.metrics import ServiceMetrics
from service.registry import ModelRegistry, ModelState, ServedModel
from service.repository import Task
from service.request_info import RequestInfo
from service.settings import Settings
from service.stats import RequestTiming
from service.streaming import TranslationStream
from service.text_checks import unencodable
from service.tracing import mark_admission, mark_batches, mark_tokenization

logger = logging.getLogger(__name__)

Disconnected = Callable[[], Awaitable[None]]  # completes when the client has gone away

TOKENIZE_INLINE_CHARS = 20_000  # ~1 ms of tokenization; above it, tokenize in a thread


@dataclass(frozen=True)
class ClassificationResult:
    model: str
    version: str
    labels: list[str]
    probabilities: list[np.ndarray]  # float32 [labels] per input
    truncated: list[int]  # indices of inputs cut to max_length

    def best(self, i: int) -> tuple[str, float]:
        k = int(np.argmax(self.probabilities[i]))
        return self.labels[k], float(self.probabilities[i][k])


@dataclass(frozen=True)
class TranslationResult:
    model: str
    version: str
    translations: list[str]
    truncated: list[int]


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        lifecycle: Lifecycle,
        metrics: ServiceMetrics,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.lifecycle = lifecycle
        self.metrics = metrics

    # ------------------------------------------------------------------ model resolution

    def model_for_task(
        self, task: Task, name: str | None, version: str | None = None
    ) -> ServedModel:
        """The named model (checked to serve `task`), or the only (not failed) model serving it;
        its default version, or `version`."""
        model = self._model_for_task(task, name)
        return model if version is None else self.registry.get(model.name, version)

    def _model_for_task(self, task: Task, name: str | None) -> ServedModel:
        if name is None:
            candidates = [  # a model that failed to load serves nothing
                m
                for m in self.registry.models()
                if m.config is not None
                and m.config.task == task
                and m.state is not ModelState.FAILED
            ]
            if not candidates:
                failed = [
                    m.name
                    for m in self.registry.models()
                    if m.config is not None and m.config.task == task
                ]
                if failed:  # configured for the task, but it did not load
                    raise ServiceError(
                        ErrorKind.NOT_READY,
                        f"model {failed[0]!r} serves {task} but failed to load "
                        "(state: failed; see the server log)",
                    )
                raise ServiceError(ErrorKind.NOT_FOUND, f"no model serves the task {task}")
            if len(candidates) > 1:
                names = ", ".join(sorted(m.name for m in candidates))
                raise ServiceError(
                    ErrorKind.VALIDATION,
                    f"several models serve {task} ({names}); name one in 'model'",
                )
            return candidates[0]
        model = self.registry.get(name)
        if model.config is not None and model.config.task != task:
            raise ServiceError(
                ErrorKind.VALIDATION,
                f"model {shorten(name)} serves {model.config.task}, not {task}",
            )
        return model

    def model_by_name(self, name: str, version: str | None = None) -> ServedModel:
        """A model by name: its default version, or the version given."""
        return self.registry.get(name, version)

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
            engine = self._admit(model, ClassifierEngine)
            self._check_texts(texts, where, items=len(inputs) if pairs else None)
            encode = engine.encoder.encode_pairs if pairs else engine.encoder.encode
            with timing.phase("compute_input"):
                encoded = await self._tokenize(model, encode, inputs)
            probabilities = await self._run(model, encoded, None, info, disconnected, timing)
            with timing.phase("compute_output"):
                return ClassificationResult(
                    model.name,
                    model.version_str,
                    engine.labels,
                    probabilities,
                    self._truncated(model, encoded),
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
            engine = self._admit(model, TranslatorEngine)
            params = decoding_params(engine.default_params(), beam_size, max_new_tokens)
            self._check_texts(texts, lambda i: f"texts[{i}]")
            with timing.phase("compute_input"):
                encoded = await self._tokenize(model, engine.encoder.encode, texts)
            translations = await self._run(model, encoded, params, info, disconnected, timing)
            with timing.phase("compute_output"):
                return TranslationResult(
                    model.name, model.version_str, translations, self._truncated(model, encoded)
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
        raised here, before the stream starts. The stream holds the drain open until it ends."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._counted(model, info))
            engine = self._admit(model, TranslatorEngine)
            if beam_size not in (None, 1):
                raise ServiceError(
                    ErrorKind.VALIDATION,
                    "streaming is greedy search only: leave beam_size out or set it to 1",
                )
            scheduler = model.batcher
            if not isinstance(scheduler, DecodeScheduler):
                raise ServiceError(
                    ErrorKind.UNSUPPORTED,
                    f"model {model.name!r} is not decoded step by step; streaming needs "
                    "translation_batching=step and a decoder exported with self_mask",
                )
            params = decoding_params(engine.default_params(), 1, max_new_tokens)
            self._check_texts([text], lambda i: f"texts[{i}]")
            (encoded,) = await self._tokenize(model, engine.encoder.encode, [text])
            if encoded.truncated and not self.settings.truncate:
                raise ServiceError(
                    ErrorKind.VALIDATION,
                    f"input 0 is longer than the model's max_length ({engine.encoder.max_length} "
                    "tokens) and truncation is disabled",
                )
            timeout = self.settings.request_timeout_s
            loop = asyncio.get_running_loop()
            if info.started + timeout <= loop.time():  # as in _run: not accepted
                raise ServiceError(
                    ErrorKind.OVERLOADED,
                    f"the server is overloaded: the request spent its request_timeout_s "
                    f"({timeout:g} s) before it could be queued; retry later",
                    retry_after=scheduler.retry_after_s(),
                )
            stream = TranslationStream(
                model=model.name,
                version=model.version_str,
                engine=engine,
                truncated=bool(self._truncated(model, [encoded])),
                deadline=info.started + timeout,
            )
            (item,) = scheduler.submit(
                [encoded],
                key=params,
                timeout_s=info.started + timeout - loop.time(),
                on_token=stream.on_token,
            )
            stream.attach(item)
            info.batch_size = item.batch_size
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
            if model.stats is not None:
                model.stats.record(timing, ok)
            if accepted:
                self.lifecycle.work_finished()

    def _admit(self, model: ServedModel, engine_type: type[Any]) -> Any:
        if model.state is ModelState.LOADING:
            raise ServiceError(ErrorKind.NOT_READY, f"model {model.name!r} is still loading")
        if model.state is ModelState.RETIRED:
            raise ServiceError(
                ErrorKind.NOT_READY,
                f"model {model.name!r} version {model.version_str} is no longer served; retry",
            )
        if model.state is ModelState.FAILED or model.engine is None:
            raise ServiceError(
                ErrorKind.NOT_READY, f"model {model.name!r} failed to load (see the server log)"
            )
        if not isinstance(model.engine, engine_type):
            raise ServiceError(ErrorKind.VALIDATION, f"model {model.name!r} cannot do this task")
        return model.engine

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
        self, model: ServedModel, encode: Callable[[Any], list[Encoded]], inputs: Any
    ) -> list[Encoded]:
        started = time.monotonic()  # the batcher's clock too: one time line for the trace
        encoded = await _off_loop_if_large(encode, inputs)
        ended = time.monotonic()
        self.metrics.tokenization_seconds.labels(model.name).observe(ended - started)
        mark_tokenization(started, ended)
        self.metrics.tokens.labels(model.name).inc(sum(e.tokens for e in encoded))
        return encoded

    def _truncated(self, model: ServedModel, encoded: Sequence[Encoded]) -> list[int]:
        cut = [i for i, e in enumerate(encoded) if e.truncated]
        if cut:
            self.metrics.truncated.labels(model.name).inc(len(cut))
        return cut

    async def _run(
        self,
        model: ServedModel,
        encoded: list[Encoded],
        key: Hashable,
        info: RequestInfo,
        disconnected: Disconnected | None,
        timing: RequestTiming,
    ) -> list[Any]:
        if not self.settings.truncate:
            for i, e in enumerate(encoded):
                if e.truncated:
                    max_length = model.config.max_length if model.config else "?"
                    raise ServiceError(
                        ErrorKind.VALIDATION,
                        f"input {i} is longer than the model's max_length ({max_length} tokens) "
                        "and truncation is disabled",
                    )
        assert model.batcher is not None  # READY models have one
        timeout = self.settings.request_timeout_s
        remaining = info.started + timeout - asyncio.get_running_loop().time()
        if remaining <= 0:  # the server was too busy to get this far in time: not accepted
            raise ServiceError(
                ErrorKind.OVERLOADED,
                f"the server is overloaded: the request spent its request_timeout_s ({timeout:g} "
                "s) before it could be queued; retry later",
                retry_after=model.batcher.retry_after_s(),
            )
        items = model.batcher.submit(
            encoded, [e.tokens for e in encoded], key=key, timeout_s=remaining
        )
        results = await wait_all(
            [item.future for item in items],
            remaining,
            disconnected,
            timeout,
            running=lambda: all(item.batch_size for item in items),
        )
        info.batch_size = max(item.batch_size for item in items)
        mark_batches(items)
        # A step-scheduled translator's sequences join running steps (no one run start): its
        # time after queueing all counts as compute_infer.
        started = [getattr(i, "run_started", None) or i.enqueued_at for i in items]
        timing.engine(items[0].enqueued_at, max(started), time.monotonic())
        return results


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


async def wait_all(
    futures: list[asyncio.Future[Any]],
    remaining_s: float,
    disconnected: Disconnected | None,
    timeout_s: float,
    running: Callable[[], bool] | None = None,
) -> list[Any]:
    """All results in order, or the first error; cancels what is left when giving up early
    (deadline, client gone, an error), so the batcher skips it.

    The deadline is for waiting in the queue: when it passes with every item already in an
    engine run (`running()`), the answer is moments away and is awaited rather than thrown
    away (an event loop busy with other requests can notice a finished run late)."""
    combined = asyncio.gather(*futures)
    combined.add_done_callback(_retrieve)  # an error after we gave up must not log as unseen
    waiters: set[asyncio.Future[Any]] = {combined}
    watcher = asyncio.ensure_future(disconnected()) if disconnected else None
    if watcher is not None:
        waiters.add(watcher)
    try:
        done, _ = await asyncio.wait(
            waiters, timeout=remaining_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not done and running is not None and running():
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if combined in done:
            try:
                return combined.result()  # raises the first item's error
            except ServiceError as e:
                if e.kind is ErrorKind.TIMEOUT:  # the batcher's view of the same deadline
                    raise _timed_out(timeout_s) from None
                raise
            except Exception as e:  # the engine failed; the batcher logged it with its traceback
                raise ServiceError(
                    ErrorKind.INTERNAL, "inference failed (details are in the server log)"
                ) from e
        if watcher is not None and watcher in done:
            raise ServiceError(ErrorKind.CLIENT_CLOSED, "the client closed the request")
        raise _timed_out(timeout_s)
    finally:
        for future in futures:
            future.cancel()  # no-op for done ones
        if not combined.done():
            combined.cancel()
        if watcher is not None:
            watcher.cancel()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _timed_out(timeout_s: float) -> ServiceError:
    """One 504 message for the deadline, whether it passed in the queue or in the engine."""
    return ServiceError(
        ErrorKind.TIMEOUT, f"the request took longer than request_timeout_s ({timeout_s:g} s)"
    )
