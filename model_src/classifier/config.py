"""Fine-tuning's options, declared once: every `FinetuneConfig` field is an option of
`python -m model_src train classifier|nli`, and the checkpoint records them as train_args."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_src.classifier.data import ReaderConfig
from model_src.common.options import OptionError, option
from model_src.common.resume import RunControl


@dataclass(kw_only=True)
class FinetuneConfig:
    """Every knob of a fine-tuning run (each is also an option); defaults train MiniLM-L6."""

    task: str = option("classifier", cli=False)  # set by the command: `train classifier|nli`
    train: tuple[Path, ...] = option(
        help="labelled TSV/CSV/JSONL(.gz); several files are concatenated in order"
    )
    dev: Path = option(help="labelled dev file")
    out: Path = option(help="checkpoint directory to write")
    init: str | None = option(None, "HF BERT checkpoint dir (default: the packaged MiniLM-L6)")
    epochs: int = option(
        3, "passes over the train files", minimum=1
    )  # BERT paper: 2-4 epochs suffice for GLUE-sized sets
    batch_size: int = option(32, "per process and micro-batch", minimum=1)  # BERT: 16 or 32
    grad_accum: int = option(1, "micro-batches per optimizer step", minimum=1)
    # Small models (6 layers, 384 wide) like the high end of BERT's range.
    lr: float = option(5e-5, "peak learning rate")
    weight_decay: float = option(
        0.01, "AdamW decay of weight matrices"
    )  # BERT's value, on weight matrices only
    warmup_ratio: float = option(0.1, "fraction of all optimizer steps spent warming up")
    max_grad_norm: float = option(1.0, "global gradient-norm clip; <= 0: off")
    # Tokens incl. [CLS]/[SEP]; SST-2/SNLI sentences fit in 128.
    max_length: int = option(128, "tokens per input", minimum=8)
    eval_every: int = option(500, "optimizer steps between dev evaluations; 0: only at epoch ends")
    log_every: int = option(10, "optimizer steps between train records", minimum=1)
    eval_batch_size: int = option(
        128, "dev examples per forward pass", minimum=1
    )  # no gradients at eval time: bigger batches fit
    seed: int = option(42, "data order, head init and dropout")
    max_train_examples: int | None = option(None, "a random subset of the train files")
    dropout: float | None = option(None, "encoder+head dropout (default: the checkpoint's, 0.1)")
    # The 30k x H word table is half of MiniLM's weights; its dense gradient and AdamW update
    # cost a quarter of a CPU step, and fine-tuning it adds little (positions stay trainable).
    freeze_embeddings: bool = option(False, "keep the word embeddings fixed (faster)")
    threads: int | None = option(None, "torch CPU threads (default: all cores)")
    # Distillation (classifier/distill.py): fine-tuned checkpoints whose averaged probabilities
    # on the train set join the gold labels as targets, with this weight and temperature.
    teachers: tuple[str, ...] = option(
        (), "fine-tuned checkpoints to distil from (their probabilities are averaged)",
        flag="--teacher", metavar="DIR",
    )  # fmt: skip
    distill_weight: float = option(0.5, "weight of the teachers' term (gold labels: 1 - it)")
    distill_temperature: float = option(1.0, "softmax temperature of the distillation term")
    reader: ReaderConfig = option(default_factory=ReaderConfig)  # columns, label names, ...
    run: RunControl = option(default_factory=RunControl)  # device, resume, step cap

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise OptionError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 < self.distill_weight <= 1.0:
            raise OptionError(f"--distill-weight must be in (0, 1], got {self.distill_weight}")
        if self.distill_temperature <= 0:
            raise OptionError(f"--distill-temperature must be > 0, got {self.distill_temperature}")
