"""Decoding with untrained tiny models of both architectures: the key/value cache (Transformer)
and hidden-state cache (GRU) change nothing but speed, beam 1 is greedy, padding is invisible."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from model_src.translator.decoding import beam_search, generate, greedy_decode
from model_src.translator.rnn import GRUAttention, GRUAttentionConfig
from model_src.translator.tokenizer import EOS_ID, PAD_ID, SOS_ID
from model_src.translator.transformer import Transformer
from model_src.translator.transformer_layers import TransformerConfig

VOCAB = 40


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models: one thread is faster than two fighting over shared cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(arch: str) -> Transformer | GRUAttention:
    torch.manual_seed(0)
    if arch == "transformer":
        config = TransformerConfig(
            vocab_size=VOCAB, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
            d_ff=64, max_positions=64,
        )  # fmt: skip
        return Transformer(config).eval()
    if arch == "transformer-eager-preln":
        config = TransformerConfig(
            vocab_size=VOCAB, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
            d_ff=64, max_positions=64, attention="eager", norm_first=True,
        )  # fmt: skip
        return Transformer(config).eval()
    return GRUAttention(
        GRUAttentionConfig(vocab_size=VOCAB, embed_dim=16, hidden_size=32, n_layers=2)
    ).eval()


ARCHS = ["transformer", "transformer-eager-preln", "gru-attention"]


def sources() -> torch.Tensor:
    """(5, 9) right-padded sources of different lengths, each ending in <eos>."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for length in (9, 4, 7, 2, 6):
        ids = torch.randint(4, VOCAB, (length,), generator=g)
        ids[-1] = EOS_ID
        rows.append(torch.cat([ids, torch.full((9 - length,), PAD_ID)]))
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_step_matches_teacher_forced_logits(arch: str) -> None:
    """Feeding a target one token at a time through the cache gives the logits of decoding the
    whole prefix at once (fp32, max abs difference 1e-5)."""
    model: Any = tiny_model(arch)  # either architecture's state type
    src = sources()
    tgt = torch.randint(4, VOCAB, (5, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        memory, mask = model.encode(src)
        full = model.decode(memory, mask, tgt)
        state, steps = model.start(memory, mask), []
        for t in range(tgt.size(1)):
            logits, state = model.step(state, tgt[:, t])
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_greedy_equals_uncached_greedy(arch: str) -> None:
    """Greedy decoding with the cache produces exactly the tokens of re-decoding the prefix."""
    model, src = tiny_model(arch), sources()
    assert greedy_decode(model, src, 12, use_cache=True) == greedy_decode(
        model, src, 12, use_cache=False
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_beam_equals_uncached_beam(arch: str) -> None:
    """Beam search (beam 4) with the cache produces exactly the tokens of the uncached search."""
    model, src = tiny_model(arch), sources()
    cached = beam_search(model, src, 4, 12, length_penalty=1.0, use_cache=True)
    uncached = beam_search(model, src, 4, 12, length_penalty=1.0, use_cache=False)
    assert cached == uncached


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_size_one_is_greedy(arch: str) -> None:
    """A beam of one is greedy search, whatever the length penalty."""
    model, src = tiny_model(arch), sources()
    greedy = greedy_decode(model, src, 12)
    assert beam_search(model, src, 1, 12, length_penalty=1.0) == greedy
    assert beam_search(model, src, 1, 12, length_penalty=0.0) == greedy


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_is_invisible(arch: str) -> None:
    """A source decoded alone (no padding) and inside a padded batch gives the same output, for
    greedy and beam search, and the same encoder states on its real positions."""
    model, src = tiny_model(arch), sources()
    batch_greedy = greedy_decode(model, src, 12)
    batch_beam = beam_search(model, src, 3, 12)
    batch_memory, _ = model.encode(src)
    for row in range(src.size(0)):
        length = int((src[row] != PAD_ID).sum())
        alone = src[row : row + 1, :length]
        assert greedy_decode(model, alone, 12)[0] == batch_greedy[row]
        assert beam_search(model, alone, 3, 12)[0] == batch_beam[row]
        memory, _ = model.encode(alone)
        torch.testing.assert_close(memory[0], batch_memory[row, :length], atol=1e-5, rtol=1e-5)


def test_wide_beam_finds_the_most_probable_hypothesis() -> None:
    """With two steps and a beam as wide as the vocabulary the search is exhaustive: it returns
    the most probable of all [<eos>] and [a, b] hypotheses (no length penalty), by brute force."""
    model = tiny_model("transformer")
    src = sources()[:2]
    allowed = [t for t in range(VOCAB) if t not in (PAD_ID, SOS_ID)]
    with torch.no_grad():
        memory, mask = model.encode(src)
        first = model.decode(memory, mask, torch.full((2, 1), SOS_ID))[:, -1]
        prefixes = torch.tensor([[SOS_ID, a] for a in allowed])  # (A, 2)
        rows = torch.arange(2).repeat_interleave(len(allowed))
        second = model.decode(memory[rows], mask[rows], prefixes.repeat(2, 1))[:, -1]
    for row in range(2):
        lp1 = first[row, allowed].log_softmax(-1)
        best = (float(lp1[allowed.index(EOS_ID)]), [EOS_ID])
        lp2 = second.view(2, len(allowed), VOCAB)[row][:, allowed].log_softmax(-1)
        for i, a in enumerate(allowed):
            if a == EOS_ID:
                continue
            j = int(lp2[i].argmax())
            best = max(best, (float(lp1[i] + lp2[i, j]), [a, allowed[j]]))
        found = beam_search(model, src[row : row + 1], len(allowed), 2, length_penalty=0.0)[0]
        assert found == best[1]


def test_generate_restores_input_order() -> None:
    """generate() sorts sources by length into batches but answers in the caller's order."""
    model, src = tiny_model("transformer"), sources()
    lists = [[int(t) for t in row if t != PAD_ID] for row in src]
    expected = [greedy_decode(model, torch.tensor([ids]), 10)[0] for ids in lists]
    assert generate(model, lists, beam_size=1, max_new_tokens=10, batch_size=2) == expected
