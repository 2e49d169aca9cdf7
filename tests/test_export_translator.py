"""Translator export: encoder/decoder graphs with a K/V cache, and ORT decoding == PyTorch's.

A tiny random Transformer (d_model 32, 2+2 layers) with a BPE vocabulary trained on the bundled
sentences: random weights rarely emit <eos>, so hypotheses run to max_new_tokens and every step
of the cache is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export import samples
from export.__main__ import main
from export.int8_fold import fold_biases
from export.publish import verify_manifest
from export.tiny import tiny_translator_checkpoint
from export.translator import export_translator
from model_src.translator.checkpoint import load_translator
from model_src.translator.data import pad
from model_src.translator.decoding import beam_search, greedy_decode
from model_src.translator.tokenizer import encode
from service import repository
from service.engines.cache_binding import CACHE_GROWTH_COLUMNS
from service.engines.generation import OnnxGenerator
from service.engines.translator_graphs import GROUP_QUERY, MASKED

MAX_NEW = 12


@pytest.fixture(autouse=True)
def _no_environment_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main()` sets OMP_WAIT_POLICY for its process; keep that out of the test session."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="module", params=[None, MASKED])
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Exported with the default decoder (group_query for this head size) and the masked one."""
    root = tmp_path_factory.mktemp("translator")
    ckpt = tiny_translator_checkpoint(root / "ckpt")
    dev = root / "dev.en"
    dev.write_text("\n".join(samples.SOURCE_SENTENCES) + "\n")
    version = export_translator(
        ckpt,
        root / "repo",
        dev_src=dev,
        max_new_tokens=MAX_NEW,
        beam_size=4,
        self_attention=request.param,
    )
    return ckpt, version


def test_the_decoder_kind_defaults_to_group_query_and_is_recorded(
    exported: tuple[Path, Path],
) -> None:
    """The manifest and the graph's metadata name the decoder kind; its inputs follow it."""
    graph = json.loads((exported[1] / "manifest.json").read_text())["graphs"]["decoder.onnx"]
    generator = OnnxGenerator.from_directory(exported[1])
    assert generator.left_aligned == (graph["self_attention"] == GROUP_QUERY)
    assert [i.name for i in generator.decoder.get_inputs()] == graph["inputs"]
    assert ("self_mask" in graph["inputs"]) == (graph["self_attention"] == MASKED)
    assert ("self_k_1" in graph["inputs"]) == (graph["self_attention"] == GROUP_QUERY)


def test_group_query_needs_a_head_size_the_kernel_takes(tmp_path: Path) -> None:
    """A head size ONNX Runtime's GroupQueryAttention cannot run falls back to masked by
    default, and asking for group_query is refused before anything is written."""
    from export.translator_graph import self_attention_kind
    from model_src.translator.transformer import Transformer
    from model_src.translator.transformer_layers import TransformerConfig

    odd = Transformer(TransformerConfig(vocab_size=30, d_model=24, n_heads=2, d_ff=16))
    assert self_attention_kind(odd, None) == MASKED  # head size 12
    with pytest.raises(ValueError, match="multiple of 8"):
        self_attention_kind(odd, GROUP_QUERY)
    with pytest.raises(ValueError, match="choose from"):
        self_attention_kind(odd, "flash")


@pytest.fixture(scope="module")
def sources(exported: tuple[Path, Path]) -> list[list[int]]:
    _, config, tokenizer = load_translator(exported[0])
    return encode(tokenizer, list(samples.SOURCE_SENTENCES), config["max_length"])


def test_export_records_greedy_and_beam_parity(exported: tuple[Path, Path]) -> None:
    """The export checked every dev sentence: identical greedy ids, beam BLEU within 0.5."""
    manifest = json.loads((exported[1] / "manifest.json").read_text())
    report = manifest["parity"]["fp32_vs_pytorch"]
    assert report["sentences"] == len(samples.SOURCE_SENTENCES)
    assert report["greedy_identical"] == report["sentences"]
    assert report["beam_size"] == 4
    assert report["beam_identical_ids"] == report["sentences"]
    assert report["beam_bleu_diff"] <= 0.5


def test_onnx_greedy_ids_equal_pytorch_greedy(
    exported: tuple[Path, Path], sources: list[list[int]]
) -> None:
    """Batched ORT greedy search returns exactly PyTorch's token ids (padded, mixed lengths)."""
    model, _, _ = load_translator(exported[0])
    src = pad(sources)
    expected = greedy_decode(model, src, MAX_NEW)
    got = OnnxGenerator.from_directory(exported[1]).greedy(src.numpy(), MAX_NEW)
    assert got == expected


def test_onnx_beam_search_equals_pytorch_and_beam_one_is_greedy(
    exported: tuple[Path, Path], sources: list[list[int]]
) -> None:
    """Beam-4 output ids equal PyTorch's beam search; beam size 1 is greedy search."""
    model, _, _ = load_translator(exported[0])
    generator = OnnxGenerator.from_directory(exported[1])
    src = pad(sources[:6])
    assert generator.beam_search(src.numpy(), 4, MAX_NEW) == beam_search(model, src, 4, MAX_NEW)
    assert generator.generate(sources[:6], beam_size=1, max_new_tokens=MAX_NEW) == (
        generator.greedy(src.numpy(), MAX_NEW)
    )


def test_decoder_cache_grows_one_position_per_step(
    exported: tuple[Path, Path], sources: list[list[int]]
) -> None:
    """Each step feeds one token and returns a cache holding one more position, from empty:
    one column longer (masked), or written in place with room to grow (group_query)."""
    generator = OnnxGenerator.from_directory(exported[1])
    state = generator.start(pad(sources[:3]).numpy())
    tokens = np.full(3, generator.sos_id, dtype=np.int64)
    assert state.self_k.shape[3] == 0
    for t in range(4):
        logits, state = generator.step(state, tokens)
        columns = 1 + CACHE_GROWTH_COLUMNS if generator.left_aligned else t + 1
        assert state.self_k.shape[3] == state.self_v.shape[3] == columns
        assert (state.position == t + 1).all()
        tokens = logits.argmax(-1)
    L, B, H, _, hd = state.self_k.shape
    assert (L, B) == (2, 3)
    assert H * hd == 32


def test_cached_step_logits_match_pytorch_uncached_decoding(
    exported: tuple[Path, Path], sources: list[list[int]]
) -> None:
    """Logits from the cached ORT steps equal PyTorch's teacher-forced (uncached) decode."""
    model, _, _ = load_translator(exported[0])
    generator = OnnxGenerator.from_directory(exported[1])
    src = pad(sources[:2])
    prefix = torch.tensor([[1, 5, 9, 4], [1, 7, 7, 8]])  # <sos> then arbitrary tokens
    with torch.no_grad():
        memory, memory_mask = model.encode(src)
        expected = model.decode(memory, memory_mask, prefix).numpy()  # (B, T, V)
    state = generator.start(src.numpy())
    for t in range(prefix.shape[1]):
        logits, state = generator.step(state, prefix[:, t].numpy())
        finite = np.isfinite(logits)  # <pad>/<sos> are masked to -inf by the step
        assert np.abs(logits[finite] - expected[:, t][finite]).max() < 1e-4


def test_repository_config_carries_generation_defaults(exported: tuple[Path, Path]) -> None:
    """The service reads the translator with its graphs, tokenizer and special token ids."""
    found = repository.read_model(exported[1].parent)
    assert verify_manifest(found.path) == []  # every checksum matches
    assert set(found.manifest.files) == {
        "encoder.onnx",
        "decoder.onnx",
        "tokenizer.json",
        "README.md",
    }
    generation = found.config.generation
    assert generation is not None
    assert (generation.pad_token_id, generation.bos_token_id, generation.eos_token_id) == (0, 1, 2)
    assert generation.max_new_tokens == MAX_NEW


def test_gru_baseline_is_refused(tmp_path: Path) -> None:
    """Only the Transformer (with its K/V cache) is exported; the GRU baseline exits 2."""
    from model_src.translator.checkpoint import build_model, save_translator
    from model_src.translator.tokenizer import train_joint_bpe

    tokenizer = train_joint_bpe(samples.SOURCE_SENTENCES, vocab_size=100, min_frequency=1)
    model = build_model("gru-attention", _tiny_gru_config(tokenizer.get_vocab_size()))
    save_translator(tmp_path / "gru", model, "gru-attention", tokenizer, max_length=32)
    argv = [
        "translator",
        "--checkpoint",
        str(tmp_path / "gru"),
        "--repository",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 2
    assert not (tmp_path / "r").exists()


def _tiny_gru_config(vocab_size: int) -> dict:
    from dataclasses import asdict, fields

    from model_src.translator.rnn import GRUAttentionConfig

    names = {f.name for f in fields(GRUAttentionConfig)}
    small = {"vocab_size": vocab_size, "emb_dim": 16, "hidden_size": 16, "d_model": 16}
    return asdict(GRUAttentionConfig(**{k: v for k, v in small.items() if k in names}))


@pytest.mark.parametrize("max_drop", [100.0, -1.0])
def test_int8_graphs_are_kept_only_inside_their_gate(
    exported: tuple[Path, Path], tmp_path: Path, max_drop: float
) -> None:
    """--quantize int8 calibrates the encoder's and decoder's weight MatMuls on the checkpoint's
    data, checks BLEU against fp32 and that ids do not depend on the batch, and keeps the first
    of (both graphs int8, the decoder alone) that passes the gate (here forced both ways: both
    kept at once, or both attempts refused); int8 graphs decode step by step to the same ids
    alone as among other sequences (the scheduler's guarantee)."""
    from service.engines.decode_batch import DecodeBatch
    from service.engines.decode_io import Join

    ckpt, fp32_version = exported
    fp32_graphs = json.loads((fp32_version / "manifest.json").read_text())["graphs"]
    dev = tmp_path / "dev.en"
    dev.write_text("\n".join(samples.SOURCE_SENTENCES) + "\n")
    version = export_translator(
        ckpt,
        tmp_path / "repo",
        dev_src=dev,
        max_new_tokens=MAX_NEW,
        self_attention=fp32_graphs["decoder.onnx"]["self_attention"],  # each decoder kind
        quantize="int8",
        calibration=dev,
        int8_max_bleu_drop=max_drop,
    )
    verify_manifest(version)
    manifest = json.loads((version / "manifest.json").read_text())
    quantization = manifest["quantization"]
    gate = quantization["gate"]
    assert gate["batch_differences"] == 0 and gate["sentences"] == len(samples.SOURCE_SENTENCES)
    assert set(gate["step_ms"]) == {"1", "8", "32"} and set(gate["encode_ms"]) == {"1", "8"}
    assert quantization["calibration"]["decoder_steps"] > 0
    assert quantization["calibration"]["encoder_runs"] > 0

    def ops(graph: str) -> set[str]:
        return {n.op_type for n in onnx.load(str(version / graph)).graph.node}

    if max_drop < 0:  # no drop can be below -1: both attempts refused, the graphs stay fp32
        assert not gate["passed"] and manifest["precision"] == "fp32"
        assert [a["graphs"] for a in quantization["attempts"]] == [
            ["encoder.onnx", "decoder.onnx"], ["decoder.onnx"]
        ]  # fmt: skip
        assert quantization["graphs"] == []
        assert "QuantizeLinear" not in ops("decoder.onnx") | ops("encoder.onnx")
        return
    assert gate["passed"] and manifest["precision"] == "int8"
    assert quantization["graphs"] == ["encoder.onnx", "decoder.onnx"]
    assert len(quantization["attempts"]) == 1
    for graph in quantization["graphs"]:  # served as ONNX Runtime's integer MatMuls, biases in
        assert {"QuantizeLinear", "MatMulIntegerToFloat"} <= ops(graph)
        assert quantization["nodes"][graph]["QDQMatMul"] > 0
        assert quantization["nodes"][graph]["MatMulBiasFolded"] > 0
        assert fold_biases(onnx.load(str(version / graph))) == 0  # none left
    generator = OnnxGenerator.from_directory(version)
    _, config, tokenizer = load_translator(ckpt)
    sources = encode(tokenizer, list(samples.SOURCE_SENTENCES), config["max_length"])
    batch = DecodeBatch(generator)
    outcomes = batch.step([Join(i, s, 1, MAX_NEW) for i, s in enumerate(sources[:3])], [])
    outcomes += batch.step([Join(i, s, 2, MAX_NEW) for i, s in enumerate(sources[3:], 3)], [])
    for _ in range(3 * MAX_NEW):
        outcomes += batch.step([], [])
    results = {o.seq_id: o.result for o in outcomes if o.result is not None}
    for i, source in enumerate(sources):
        beams = 1 if i < 3 else 2
        assert results[i] == generator.generate([source], beams, MAX_NEW)[0], i
