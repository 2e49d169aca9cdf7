"""Translation: the ORT generation loop of `service.engines.generation` (greedy or beam search,
with a key/value cache) over the version's encoder.onnx and decoder.onnx.

Batches are keyed by `DecodingParams`, so only requests with the same beam size and token limit
share a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.engines.decode_batch import DecodeBatch
from service.engines.generation import OnnxGenerator
from service.engines.session import SessionSettings, create_session
from service.engines.tokenization import Encoded, TextEncoder
from service.repository import ModelVersion


@dataclass(frozen=True)
class DecodingParams:
    beam_size: int
    max_new_tokens: int


class TranslatorEngine:
    """Loads one translator version (blocking: call it on the model's worker thread)."""

    def __init__(self, version: ModelVersion, settings: SessionSettings) -> None:
        config = version.config
        assert config.generation is not None  # ModelConfig fills it in for translation
        self.generation = config.generation
        tokenizer_json = version.read_verified("tokenizer.json").decode("utf-8")
        self.encoder = TextEncoder(tokenizer_json, config.max_length)
        encoder, self.provider = create_session(version.read_verified("encoder.onnx"), settings)
        decoder, _ = create_session(version.read_verified("decoder.onnx"), settings)
        self.generator = OnnxGenerator(
            encoder,
            decoder,
            pad_id=self.generation.pad_token_id,
            sos_id=self.generation.bos_token_id,
            eos_id=self.generation.eos_token_id,
        )
        version.verify_others(loaded=("encoder.onnx", "decoder.onnx", "tokenizer.json"))

    def default_params(self) -> DecodingParams:
        return DecodingParams(self.generation.beam_size, self.generation.max_new_tokens)

    def run(self, batch: list[Encoded], key: DecodingParams) -> list[str]:
        ids = self.generator.generate(
            [e.ids for e in batch],
            beam_size=key.beam_size,
            max_new_tokens=key.max_new_tokens,
            length_penalty=self.generation.length_penalty,
        )
        return self.encoder.decode(ids)

    def decode_batch(self) -> DecodeBatch:
        """A running batch for the step scheduler (iteration-level batching)."""
        return DecodeBatch(self.generator, self.generation.length_penalty)

    def finish(self, ids: list[int]) -> str:
        """The text of one finished sequence."""
        return self.encoder.decode([ids])[0]

    def warmup(self, max_batch_size: int) -> None:
        text = "warm up " * self.encoder.max_length
        batch = self.encoder.encode([text] * min(max_batch_size, 4) + ["warm up"])
        self.run(batch, DecodingParams(self.generation.beam_size, 4))
        self.run(batch[-1:], DecodingParams(1, 4))
