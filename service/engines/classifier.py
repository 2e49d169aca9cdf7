"""Sequence classification (one text, or a premise/hypothesis pair) on one ONNX Runtime session.

The graph takes int64 [batch, sequence] `input_ids`, `attention_mask` and maybe `token_type_ids`
(only the inputs the graph declares are fed) and returns float32 `logits` [batch, labels]; the
engine returns softmax probabilities per sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import replace

import numpy as np
import onnxruntime as ort

from service.engines.session import CPU, SessionSettings, create_session
from service.engines.tokenization import Encoded, TextEncoder
from service.repository import ModelVersion, RepositoryError

logger = logging.getLogger(__name__)

KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits), returned as float32."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class ClassifierEngine:
    """Loads one classifier version (blocking: call it on the model's worker thread)."""

    def __init__(
        self, version: ModelVersion, settings: SessionSettings, *, single_thread_runs: bool = False
    ) -> None:
        config = version.config
        assert config.labels is not None  # guaranteed by ModelConfig for classification tasks
        self.labels = list(config.labels)
        self.pair = config.task == "text-pair-classification"
        tokenizer_json = version.read_verified("tokenizer.json").decode("utf-8")
        self.encoder = TextEncoder(tokenizer_json, config.max_length)
        model = version.read_verified("model.onnx")
        self.session, self.provider = create_session(model, settings)
        # Under load the batcher runs batches side by side on a one-thread session instead of one
        # at a time on all threads (service/batcher.py, run_alone): on a small CPU an operator
        # split over every core waits at its barrier for whichever thread the HTTP side took.
        self.single_thread_session: ort.InferenceSession | None = None
        if single_thread_runs and self.provider == CPU and settings.intra_op_threads > 1:
            one_thread = replace(settings, providers="cpu", intra_op_threads=1)
            self.single_thread_session, _ = create_session(model, one_thread)
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        unknown = [n for n in self.inputs if n not in KNOWN_INPUTS]
        bad_type = [
            n for n, t in self.inputs.items() if n in KNOWN_INPUTS and t not in _NUMPY_TYPES
        ]
        if "input_ids" not in self.inputs or unknown or bad_type:
            raise RepositoryError(
                f"{version.path}/model.onnx has inputs {self.inputs}; expected int64 input_ids "
                f"and optionally attention_mask, token_type_ids"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "logits" if "logits" in outputs else outputs[0]
        version.verify_others(loaded=("model.onnx", "tokenizer.json"))

    def run(self, batch: list[Encoded], key: Hashable = None) -> list[np.ndarray]:
        """Probabilities float32 [labels] per sequence; the batch is padded to its longest."""
        return self._run(self.session, batch)

    def run_single_thread(self, batch: list[Encoded], key: Hashable = None) -> list[np.ndarray]:
        """`run` on the one-thread session (the same results), for runs side by side."""
        return self._run(self.single_thread_session or self.session, batch)

    def _run(self, session: ort.InferenceSession, batch: list[Encoded]) -> list[np.ndarray]:
        B, T = len(batch), max(e.tokens for e in batch)
        ids = np.full((B, T), self.encoder.pad_id, dtype=np.int64)
        mask = np.zeros((B, T), dtype=np.int64)
        types = np.zeros((B, T), dtype=np.int64)
        for row, e in enumerate(batch):
            ids[row, : e.tokens] = e.ids
            mask[row, : e.tokens] = 1
            types[row, : e.tokens] = e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {n: arrays[n].astype(_NUMPY_TYPES[t], copy=False) for n, t in self.inputs.items()}
        (logits,) = session.run([self.output], feeds)
        if logits.shape != (B, len(self.labels)):
            raise RuntimeError(
                f"model returned logits of shape {logits.shape}, expected {(B, len(self.labels))}"
            )
        return list(softmax(logits))

    def warmup(self, max_batch_size: int) -> None:
        """Run a full-length batch and a short single sequence, so the first request is not slow."""
        text = "warm up " * self.encoder.max_length
        if self.pair:
            long = self.encoder.encode_pairs([(text, text)] * min(max_batch_size, 8))
            short = self.encoder.encode_pairs([("warm", "up")])
        else:
            long = self.encoder.encode([text] * min(max_batch_size, 8))
            short = self.encoder.encode(["warm up"])
        for session in filter(None, (self.session, self.single_thread_session)):
            self._run(session, long)
            self._run(session, short)
