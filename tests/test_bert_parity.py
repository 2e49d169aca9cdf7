"""Our BertModel against transformers.BertModel on the packaged MiniLM-L6 checkpoint, and the
checkpoint-loading routes (safetensors / pytorch_model.bin, tokenizer.json / vocab.txt)."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

# Never reach for the Hugging Face hub: everything here is local files.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_src.bert.hf_checkpoint import (
    default_checkpoint_dir,
    load_pretrained_bert,
    save_hf_bert,
)
from model_src.bert.model import AttnImplementation, BertConfig, BertModel
from model_src.bert.tokenization import encode_batch, load_tokenizer

FP32_ATOL = 1e-5  # max-abs difference allowed between two fp32 implementations

SENTENCES = [
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Hello!",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
]


@pytest.fixture(scope="module")
def checkpoint_dir() -> Path:
    return default_checkpoint_dir()


@pytest.fixture(scope="module")
def batch(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    tokenizer = load_tokenizer(checkpoint_dir, max_length=128)
    return encode_batch(tokenizer, SENTENCES).padded()


@pytest.fixture(scope="module")
def minilm(checkpoint_dir: Path) -> BertModel:
    """Our MiniLM-L6 (SDPA path), loaded once for the tests that only read it."""
    return load_pretrained_bert(checkpoint_dir, "sdpa")


def hf_bert(checkpoint_dir: Path, attn_implementation: AttnImplementation) -> torch.nn.Module:
    import transformers

    model = transformers.BertModel.from_pretrained(
        str(checkpoint_dir), local_files_only=True, attn_implementation=attn_implementation
    )
    return model.eval()


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_last_hidden_states_match_transformers(
    checkpoint_dir: Path, batch: dict[str, torch.Tensor], attn_implementation: AttnImplementation
) -> None:
    """On a padded batch of real sentences of different lengths, our last hidden states equal
    transformers.BertModel's within 1e-5 (fp32) at every non-padding position."""
    ours = load_pretrained_bert(checkpoint_dir, attn_implementation)
    assert ours.config.attn_implementation == attn_implementation
    reference = hf_bert(checkpoint_dir, attn_implementation)
    assert batch["attention_mask"].sum(1).unique().numel() == len(SENTENCES)  # really padded
    with torch.no_grad():
        got = ours(**batch)
        want = reference(**batch).last_hidden_state
    tokens = batch["attention_mask"].bool()
    assert got.shape == want.shape
    assert (got - want)[tokens].abs().max().item() < FP32_ATOL


def test_padding_does_not_change_other_positions(
    minilm: BertModel, batch: dict[str, torch.Tensor]
) -> None:
    """Each sentence encoded alone gives the same hidden states as inside the padded batch."""
    model = minilm
    with torch.no_grad():
        batched = model(**batch)
        for i in range(len(SENTENCES)):
            n = int(batch["attention_mask"][i].sum())
            alone = model(
                batch["input_ids"][i : i + 1, :n],
                batch["attention_mask"][i : i + 1, :n],
                batch["token_type_ids"][i : i + 1, :n],
            )
            assert (alone[0] - batched[i, :n]).abs().max().item() < FP32_ATOL


def test_pytorch_model_bin_and_vocab_txt_give_same_results(
    checkpoint_dir: Path, minilm: BertModel, batch: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """A copy with pytorch_model.bin (old "bert." prefix and gamma/beta LayerNorm names) and only
    vocab.txt as tokenizer loads to the same ids and the same hidden states."""
    state = load_file(checkpoint_dir / "model.safetensors")
    old_style = {}
    for name, tensor in state.items():
        name = "bert." + name
        if "LayerNorm.weight" in name:
            name = name.replace("LayerNorm.weight", "LayerNorm.gamma")
        if "LayerNorm.bias" in name:
            name = name.replace("LayerNorm.bias", "LayerNorm.beta")
        old_style[name] = tensor
    torch.save(old_style, tmp_path / "pytorch_model.bin")
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(checkpoint_dir / name, tmp_path / name)

    tokenizer = load_tokenizer(tmp_path, max_length=128)
    copy_batch = encode_batch(tokenizer, SENTENCES).padded()
    for key in batch:
        assert torch.equal(copy_batch[key], batch[key])
    with torch.no_grad():
        want = minilm(**batch)
        got = load_pretrained_bert(tmp_path)(**copy_batch)
    assert torch.equal(got, want)


TINY = BertConfig(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def test_missing_weight_is_a_clear_error(checkpoint_dir: Path, tmp_path: Path) -> None:
    """A checkpoint lacking one encoder weight fails naming that weight, not with a shape dump."""
    tokenizer = load_tokenizer(checkpoint_dir)
    save_hf_bert(BertModel(TINY), TINY, tmp_path, tokenizer)
    state = load_file(tmp_path / "model.safetensors")
    del state["encoder.layer.1.attention.self.key.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(KeyError, match=r"lacks 1 BERT weight.*encoder\.layer\.1\.attention\.self"):
        load_pretrained_bert(tmp_path)


def test_saved_checkpoint_loads_in_transformers(checkpoint_dir: Path, tmp_path: Path) -> None:
    """save_hf_bert writes a real HF BERT directory: transformers loads it to the same outputs."""
    import transformers

    torch.manual_seed(0)
    model = BertModel(TINY).eval()
    save_hf_bert(model, TINY, tmp_path, load_tokenizer(checkpoint_dir))
    reference = transformers.BertModel.from_pretrained(
        str(tmp_path), local_files_only=True, add_pooling_layer=False
    ).eval()
    ids = torch.randint(5, TINY.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        got = model(ids, mask)
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got - want)[mask.bool()].abs().max().item() < FP32_ATOL


# The TorchScript exporter is the one export/ uses (dynamo defeats ORT's attention fusion); its
# deprecation warning is attributed to the caller (stacklevel 2), i.e. to this module.
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_onnx_export_with_dynamic_axes(
    attn_implementation: AttnImplementation, tmp_path: Path
) -> None:
    """The encoder exports with the TorchScript exporter (opset 17) and the graph, traced at one
    batch/sequence size, runs in ONNX Runtime at another with the same outputs."""
    import onnxruntime

    torch.manual_seed(0)
    model = BertModel(replace(TINY, attn_implementation=attn_implementation)).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(5, 120, (2, 7))
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    path = tmp_path / "bert.onnx"
    torch.onnx.export(
        model,
        example,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names},
    )
    ids = torch.randint(5, 120, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    types = torch.zeros_like(ids)
    types[:, 8:] = 1
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    feeds["token_type_ids"] = types.numpy()
    (got,) = session.run(None, feeds)
    with torch.no_grad():
        want = model(ids, mask, types)
    assert (torch.from_numpy(got) - want)[mask.bool()].abs().max().item() < FP32_ATOL
