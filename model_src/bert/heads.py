"""Thin task heads on the shared BERT encoder: sequence classification and MLM+NSP pretraining."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model_src.bert.model import BertConfig, BertModel, _activation, init_weights

IGNORE_INDEX = -100  # label value of positions that carry no loss (F.cross_entropy's default)


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None  # mean cross-entropy, only when labels were given


class SequenceClassifier(nn.Module):
    """[CLS] hidden state -> dropout -> linear. Single texts and text pairs alike."""

    def __init__(self, encoder: BertModel, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        init_weights(self.classifier, encoder.config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        cls = hidden[:, 0]  # (B, H): the [CLS] position
        logits = self.classifier(self.dropout(cls))  # (B, num_labels)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ClassifierOutput(logits=logits, loss=loss)


@dataclass
class PretrainingOutput:
    loss: torch.Tensor | None  # mlm_loss + nsp_loss (each term only when its labels were given)
    mlm_loss: torch.Tensor | None
    nsp_loss: torch.Tensor | None
    # With mlm_labels: (N_selected, V) logits of the selected positions only (a full (B, T, V)
    # tensor is ~0.5 GB for a 32x128 batch over 30k words); without: (B, T, V).
    mlm_logits: torch.Tensor
    nsp_logits: torch.Tensor  # (B, 2): 0 = is the next sentence, 1 = random sentence


class BertForPretraining(nn.Module):
    """Masked-LM + next-sentence prediction on BERT (the original pretraining objective).

    MLM: dense -> GELU -> LayerNorm -> decoder whose weight is the word-embedding matrix (tied,
    as in BERT) plus its own per-word bias. NSP: tanh pooler on [CLS] -> linear to 2 classes.
    """

    def __init__(self, config: BertConfig, encoder: BertModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.bert = encoder if encoder is not None else BertModel(config)
        H = config.hidden_size
        self.pooler = nn.Linear(H, H)
        self.mlm_transform = nn.Linear(H, H)
        self.mlm_act = _activation(config.hidden_act)
        self.mlm_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.nsp = nn.Linear(H, 2)
        for linear in (self.pooler, self.mlm_transform, self.nsp):
            init_weights(linear, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        nsp_labels: torch.Tensor | None = None,
    ) -> PretrainingOutput:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        if mlm_labels is not None:
            selected = mlm_labels != IGNORE_INDEX  # (B, T)
            hidden_mlm = hidden[selected]  # (N_selected, H)
            targets = mlm_labels[selected]  # (N_selected,)
        else:
            hidden_mlm = hidden
        h = self.mlm_norm(self.mlm_act(self.mlm_transform(hidden_mlm)))
        mlm_logits = F.linear(h, self.bert.embeddings.word.weight, self.mlm_bias)  # (..., V)
        pooled = torch.tanh(self.pooler(hidden[:, 0]))  # (B, H)
        nsp_logits = self.nsp(pooled)  # (B, 2)

        mlm_loss = nsp_loss = None
        if mlm_labels is not None:
            # A batch with no selected position (possible for tiny batches) contributes 0, not NaN.
            mlm_loss = (
                F.cross_entropy(mlm_logits, targets)
                if targets.numel() > 0
                else mlm_logits.sum() * 0.0
            )
        if nsp_labels is not None:
            nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
        terms = [t for t in (mlm_loss, nsp_loss) if t is not None]
        loss = torch.stack(terms).sum() if terms else None
        return PretrainingOutput(loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits)
