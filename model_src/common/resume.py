"""Resumable training: the run-control options every trainer shares, and the resume state.

A resume state is one file, `<out>/resume.pt`, holding everything that decides what a run does
next: weights, optimiser and scheduler state, every random generator (Python, NumPy, torch CPU
and CUDA, plus any private generator a trainer names), the data position (epoch and batches
already consumed in it) and the trainer's own bookkeeping (best dev score so far, counters).
Restoring all of it makes the resumed run take exactly the steps the uninterrupted one would
have, so their final weights are equal (tests/test_resume.py checks it).

Trainers write it every `--save-every-minutes`, at epoch ends, when `--max-steps` or a time
budget stops them, and when they finish; `--resume` continues from it. The best checkpoint in
--out is separate and untouched by this file. Under torchrun the state is rank 0's: weights,
optimiser and position restore on every rank, each rank's dropout draws restart from rank 0's
generator, so a resumed data-parallel run is close to, not bit-identical with, an uninterrupted one.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from model_src.common.options import option
from model_src.common.training import PRECISIONS, MetricsLogger

log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
_GROUP = "run control"


@dataclass(kw_only=True)
class RunControl:
    """Where a run trains, when it stops early, and how it survives an interruption."""

    device: str = option(
        "cpu",
        "cpu | cuda | cuda:N | auto (CUDA when torch sees a GPU)",
        group=_GROUP,
    )
    precision: str = option(
        "auto",
        "matmul precision: fp32 | bf16 (autocast; weights stay fp32) | auto (bf16 on CUDA and "
        "on CPUs with native bf16 instructions, AVX512_BF16 or AMX; else fp32)",
        choices=PRECISIONS,
        group=_GROUP,
    )
    max_steps: int = option(
        0,
        "stop after N optimizer steps, writing the resume state (0: no cap)",
        minimum=0,
        group=_GROUP,
    )
    # 10 minutes loses little work and costs one write of weights + optimiser (~3x the weights).
    save_every_minutes: float = option(
        10.0,
        "write the resume state (weights, optimiser, schedule, RNG states, data position) this "
        "often, and at every epoch end",
        group=_GROUP,
    )
    resume: bool = option(
        False,
        "continue the run in --out from its resume state (starts afresh when there is none)",
        group=_GROUP,
    )


@dataclass
class Position:
    """How far a run got: optimizer steps done, the epoch it is in, batches consumed in it."""

    step: int = 0
    epoch: int = 0  # 0-based
    batches_in_epoch: int = 0  # micro-batches (classifier) or batches of this epoch consumed
    finished: bool = False  # the run completed; resuming it only re-reports


def rng_states() -> dict[str, Any]:
    """Every global generator's state, in a form torch.load(weights_only=True) accepts."""
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, gauss = legacy
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(_as_tuples(states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants the nested tuples getstate gave (a round trip may give lists)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


@dataclass
class ResumeState:
    """What `load_resume_state` returns; the trainer applies it with `restore`."""

    position: Position
    extra: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    generators: dict[str, torch.Tensor] = field(default_factory=dict)

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generators: dict[str, torch.Generator] | None = None,
    ) -> None:
        """Load weights, optimiser, schedule and generators; call it last, once everything that
        draws random numbers while being built (the model, data) exists."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.scheduler)
        for name, generator in (generators or {}).items():
            generator.set_state(self.generators[name])
        set_rng_states(self.rng)


def load_resume_state(out_dir: Path) -> ResumeState | None:
    """The resume state in out_dir, or None when the run never wrote one."""
    path = out_dir / RESUME_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    log.info("resuming from %s (step %d)", path, state["position"]["step"])
    return ResumeState(
        position=Position(**state["position"]),
        extra=state["extra"],
        model=state["model"],
        optimizer=state["optimizer"],
        scheduler=state["scheduler"],
        rng=state["rng"],
        generators=state["generators"],
    )


def nothing_to_resume(control: RunControl, out_dir: Path) -> bool:
    """True (and says so) when --resume finds the run in out_dir finished: a re-run pipeline
    (`make models`) then skips it instead of loading its data and model again."""
    path = out_dir / RESUME_FILE
    if not control.resume or not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if state["position"]["finished"]:
        print(f"{out_dir}: this run finished before; nothing to resume")
        return True
    return False


def step_cap_reached(step: int, control: RunControl) -> bool:
    return bool(control.max_steps) and step >= control.max_steps


class SaveClock:
    """Says when `--save-every-minutes` has passed since the last resume state was written."""

    def __init__(self, minutes: float) -> None:
        self.interval_s = minutes * 60.0
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.interval_s > 0 and time.monotonic() - self.last >= self.interval_s

    def saved(self) -> None:
        self.last = time.monotonic()


class RunFiles:
    """What every trainer keeps in --out besides its checkpoint: the resume state it continues
    from (`take_resumed`), metrics.jsonl (appended to when resuming) and the
    --save-every-minutes clock. Only rank 0 writes."""

    def __init__(self, out: Path, control: RunControl, is_main: bool) -> None:
        self.out, self.is_main = out, is_main
        self._resumed = load_resume_state(out) if control.resume else None
        self.metrics = MetricsLogger(
            out / "metrics.jsonl", enabled=is_main, append=self._resumed is not None
        )
        self.clock = SaveClock(control.save_every_minutes)

    def take_resumed(self) -> ResumeState | None:
        """The state to restore (None for a fresh run); handed over once, so that its tensors
        are freed once restored instead of living as long as the run."""
        resumed, self._resumed = self._resumed, None
        return resumed

    def save_due(self) -> bool:
        return self.clock.due()

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        position: Position,
        extra: dict[str, Any],
        generators: dict[str, torch.Generator] | None = None,
    ) -> None:
        """Write <out>/resume.pt (rank 0; via a temporary name, so a kill mid-write keeps the
        last one) and restart the clock (every rank)."""
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            state = {
                "position": vars(position),
                "extra": extra,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_states(),
                "generators": {k: g.get_state() for k, g in (generators or {}).items()},
            }
            path = self.out / RESUME_FILE
            tmp = path.with_name(RESUME_FILE + ".tmp")
            torch.save(state, tmp)
            tmp.replace(path)
        self.clock.saved()
