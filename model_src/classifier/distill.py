"""Knowledge distillation: soft targets from fine-tuned teachers for a student's training.

Averaging several fine-tuned runs' predictions (an ensemble) beats each run, but serving N
models costs N forward passes. Distillation trains one student of the served size on the
ensemble's averaged class probabilities as well as the gold labels (Hinton et al., 2015):

    loss = (1 - w) * CE(student, gold) + w * T^2 * KL(teacher_T || student_T)

where `_T` is a softmax at temperature T (T^2 keeps the gradient scale independent of T). The
teachers score the training set once, before the first step; each teacher uses its own
tokenizer and max_length, so a teacher need not share the student's vocabulary, only its labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from torch.utils.data import Dataset

from model_src.classifier.data import Example
from model_src.classifier.dataset import EncodedDataset
from model_src.classifier.evaluate import iter_logits


@dataclass
class Teacher:
    model: nn.Module  # a SequenceClassifier in eval mode
    tokenizer: Tokenizer
    max_length: int
    pad_id: int = 0


@torch.inference_mode()
def teacher_probabilities(
    teachers: Sequence[Teacher],
    examples: Sequence[Example],
    num_labels: int,
    temperature: float,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """(N, num_labels) float32 on the CPU: the mean over teachers of softmax(logits / T)."""
    if not teachers:
        raise ValueError("at least one teacher is needed")
    total = torch.zeros(len(examples), num_labels)
    for teacher in teachers:
        dataset = EncodedDataset(examples, teacher.tokenizer, teacher.max_length)
        model = teacher.model.to(device).eval()
        everything = range(len(dataset))
        for indices, logits, _ in iter_logits(
            model, dataset, everything, batch_size, device, teacher.pad_id
        ):
            total[torch.as_tensor(indices)] += F.softmax(logits.cpu() / temperature, dim=-1)
    return total / len(teachers)


def distillation_loss_sum(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(teacher || softmax(student / T)), summed over the batch (callers divide)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C)
    return F.kl_div(log_student, teacher_probs, reduction="sum") * temperature**2


class WithSoftLabels(Dataset[dict[str, Any]]):
    """A dataset's items plus row i of the teachers' probabilities (the Collator stacks them)."""

    def __init__(self, dataset: EncodedDataset, soft_labels: torch.Tensor) -> None:
        if len(dataset) != soft_labels.shape[0]:
            raise ValueError(f"{len(dataset)} examples but {soft_labels.shape[0]} soft labels")
        self.dataset = dataset
        self.soft_labels = soft_labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "soft_label": self.soft_labels[index]}

    @property
    def lengths(self) -> list[int]:
        return self.dataset.lengths
