"""What enters and leaves the running decode batch (service/engines/decode_batch.py): a
sequence joining it (`Join`), joiners encoded beforehand (`EncodedRun`), and what a step did for
each sequence (`Outcome`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.engines.generation import DecoderState


@dataclass(frozen=True)
class Join:
    """A sequence entering the batch: its encoded source (ending in <eos>) and search."""

    seq_id: int
    src_ids: Sequence[int]
    beam_size: int
    max_new_tokens: int


@dataclass(frozen=True)
class EncodedRun:
    """Joiners encoded in one encoder run (`DecodeBatch.encode`) and the state it made for them:
    encoder outputs, empty caches, one row per joiner in `joins` order."""

    joins: tuple[Join, ...]
    fresh: DecoderState

    def without(self, seq_ids: set[int]) -> EncodedRun | None:
        """This run minus the joiners in `seq_ids` (their client left while it ran)."""
        keep = [i for i, j in enumerate(self.joins) if j.seq_id not in seq_ids]
        if len(keep) == len(self.joins):
            return self
        if not keep:
            return None
        return EncodedRun(tuple(self.joins[i] for i in keep), self.fresh.select(np.asarray(keep)))


@dataclass(frozen=True)
class Outcome:
    """What one step did for one sequence."""

    seq_id: int
    token: int | None  # greedy: the token decoded this step (beam search: None until done)
    result: list[int] | None  # the final ids, when the sequence finished this step
