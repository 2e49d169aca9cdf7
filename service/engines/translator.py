"""Translation: the ORT generation loop of `service.engines.generation` (greedy or beam search,
with a key/value cache) over the version's encoder.onnx and decoder.onnx.

Batches are keyed by `DecodingParams`, so only requests with the same beam size and token limit
share a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from onnxruntime import InferenceSession

from service.engines.decode_batch import DecodeBatch
from service.engines.generation import OnnxGenerator
from service.engines.session import CPU, SessionSettings, create_session
from service.engines.tokenization import Encoded, TextEncoder
from service.repository import ModelVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingParams:
    beam_size: int
    max_new_tokens: int


class TranslatorEngine:
    """Loads one translator version (blocking: call it on the model's worker thread)."""

    def __init__(
        self, version: ModelVersion, settings: SessionSettings, *, single_thread_runs: bool = False
    ) -> None:
        """`single_thread_runs`: on CPU with several intra-op threads, also open one-thread
        encoder and decoder sessions, for runs side by side: the step scheduler's lanes
        (service/decode_lanes.py) or request-level batches under load (service/batcher.py)."""
        config = version.config
        self.name = version.name
        assert config.generation is not None  # ModelConfig fills it in for translation
        self.generation = config.generation
        tokenizer_json = version.read_verified("tokenizer.json").decode("utf-8")
        self.encoder = TextEncoder(tokenizer_json, config.max_length)
        encoder_onnx = version.read_verified("encoder.onnx")
        encoder, self.provider = create_session(encoder_onnx, settings)
        decoder_onnx = version.read_verified("decoder.onnx")
        decoder, _ = create_session(decoder_onnx, settings)
        self.generator = self._generator(encoder, decoder)
        if self.provider != CPU and self.generator.left_aligned:
            logger.warning(
                "%s: decoder.onnx uses GroupQueryAttention, whose %s kernel takes float16 only: "
                "its fp32 self-attention runs on the CPU; export with --self-attention masked "
                "to keep every step on the device",
                self.name,
                self.provider,
            )
        # Runs side by side take one thread each: a run split over several threads waits at
        # every MatMul's barrier for the thread the other run holds (service/decode_lanes.py).
        self.single_thread_generator: OnnxGenerator | None = None
        if single_thread_runs and self.provider == CPU and settings.intra_op_threads > 1:
            one_thread = replace(settings, providers="cpu", intra_op_threads=1)
            self.single_thread_generator = self._generator(
                create_session(encoder_onnx, one_thread)[0],
                create_session(decoder_onnx, one_thread)[0],
            )
        version.verify_others(loaded=("encoder.onnx", "decoder.onnx", "tokenizer.json"))

    @property
    def sessions_released(self) -> bool:
        return self.generator.sessions_released

    def release_sessions(self) -> None:
        """Drop every session, keeping the tokenizer and what the sessions told (special ids,
        `max_steps`, the cache layout): when the lanes decode in processes of their own, the
        server's sessions would only hold memory (the recipe's int8 model: the server's RSS
        went from 304 to 127 MB without them and their warm-up). Any run after it raises."""
        self.generator.release_sessions()
        self.single_thread_generator = None

    def _generator(self, encoder: InferenceSession, decoder: InferenceSession) -> OnnxGenerator:
        return OnnxGenerator(
            encoder,
            decoder,
            pad_id=self.generation.pad_token_id,
            sos_id=self.generation.bos_token_id,
            eos_id=self.generation.eos_token_id,
        )

    def default_params(self) -> DecodingParams:
        return DecodingParams(self.generation.beam_size, self.generation.max_new_tokens)

    def run(self, batch: list[Encoded], key: DecodingParams) -> list[str]:
        return self._run(self.generator, batch, key)

    def run_single_thread(self, batch: list[Encoded], key: DecodingParams) -> list[str]:
        """`run` on the one-thread sessions (the same ids), for runs side by side."""
        return self._run(self.single_thread_generator or self.generator, batch, key)

    def _run(
        self, generator: OnnxGenerator, batch: list[Encoded], key: DecodingParams
    ) -> list[str]:
        ids = generator.generate(
            [e.ids for e in batch],
            beam_size=key.beam_size,
            max_new_tokens=key.max_new_tokens,
            length_penalty=self.generation.length_penalty,
        )
        return self.encoder.decode(ids)

    def decode_batch(self, side_by_side: bool = False) -> DecodeBatch:
        """A running batch for the step scheduler (iteration-level batching); `side_by_side`:
        one of several lanes stepped side by side, on the one-thread sessions."""
        generator = self.single_thread_generator if side_by_side else None
        return DecodeBatch(generator or self.generator, self.generation.length_penalty)

    def finish(self, ids: list[int]) -> str:
        """The text of one finished sequence."""
        return self.encoder.decode([ids])[0]

    def whole_words(self, ids: list[int]) -> str:
        """The text of the words of a sequence still decoding that are whole, without the space
        after the last (a stream sends no more, so no word is split between its pieces). A
        word is whole once the next one starts (a space follows it); when the vocabulary marks
        word ends (`TextEncoder.word_end_ids`), already at its last subword, one decoder step
        sooner (the tokenizer never puts a subword that continues a word after one that ends
        it; a model that generates one anyway gets the two words glued, in two pieces)."""
        word_ends = self.encoder.word_end_ids
        end = 0
        if word_ends is not None:
            end = next((n for n in range(len(ids), 0, -1) if ids[n - 1] in word_ends), 0)
            if end == len(ids):
                return self.finish(ids)
        text = self.finish(ids)
        whole = text[: text.rfind(" ") + 1].rstrip(" ")
        marked = self.finish(ids[:end]) if end else ""
        return max(whole, marked, key=len)  # both are prefixes of `text`

    def warmup(self, max_batch_size: int) -> None:
        text = "warm up " * self.encoder.max_length
        batch = self.encoder.encode([text] * min(max_batch_size, 4) + ["warm up"])
        for generator in filter(None, (self.generator, self.single_thread_generator)):
            self._run(generator, batch, DecodingParams(self.generation.beam_size, 4))
            self._run(generator, batch[-1:], DecodingParams(1, 4))
