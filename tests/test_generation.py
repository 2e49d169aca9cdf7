"""service/engines/generation.py: the numpy + ONNX Runtime decoding loop the translator is served
with.

Graphs come from a tiny random Transformer exported once per module (the loop itself needs no
torch; only building the fixture does).
"""

from __future__ import annotations

import numpy as np
import pytest

from service.engines.cache_binding import CACHE_GROWTH_COLUMNS
from service.engines.generation import OnnxGenerator, _log_softmax, _topk
from service.engines.translator_graphs import GROUP_QUERY, MASKED

MAX_POSITIONS = 20  # a short sinusoidal table, so the positional cap is reachable in a test


@pytest.fixture(scope="module", params=[GROUP_QUERY, MASKED])
def generator(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> OnnxGenerator:
    """Both decoder kinds (their caches are laid out differently)."""
    import torch

    from export.translator_graph import export_graphs, with_eager_attention
    from model_src.translator.transformer import Transformer
    from model_src.translator.transformer_layers import TransformerConfig

    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=50,
        d_model=16,
        n_heads=2,
        n_encoder_layers=1,
        n_decoder_layers=2,
        d_ff=32,
        max_positions=MAX_POSITIONS,
    )
    out = tmp_path_factory.mktemp("graphs")
    export_graphs(with_eager_attention(Transformer(config)), out, request.param)
    return OnnxGenerator.from_directory(out)


SOURCES = [[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 13, 14, 2], [20, 21, 2]]


def test_special_ids_come_from_the_decoder_metadata(generator: OnnxGenerator) -> None:
    """pad/sos/eos ids and the positional limit are read from decoder.onnx's metadata."""
    assert (generator.pad_id, generator.sos_id, generator.eos_id) == (0, 1, 2)
    assert generator.max_positions == MAX_POSITIONS


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_generation_equals_one_source_at_a_time(
    generator: OnnxGenerator, beam_size: int
) -> None:
    """Padding and batching never change a source's output (results keep input order)."""
    batched = generator.generate(SOURCES, beam_size=beam_size, max_new_tokens=8)
    alone = [generator.generate([s], beam_size=beam_size, max_new_tokens=8)[0] for s in SOURCES]
    assert batched == alone


def test_outputs_never_hold_pad_or_sos_and_stop_at_eos(generator: OnnxGenerator) -> None:
    """Generated ids exclude <pad>/<sos>; nothing follows an <eos>; length <= max_new_tokens."""
    for beam_size in (1, 4):
        for ids in generator.generate(SOURCES, beam_size=beam_size, max_new_tokens=10):
            assert 0 < len(ids) <= 10
            assert generator.pad_id not in ids and generator.sos_id not in ids
            assert generator.eos_id not in ids[:-1]


def test_decoding_stops_at_the_positional_limit(generator: OnnxGenerator) -> None:
    """A max_new_tokens past the sinusoidal table is capped instead of failing in the graph."""
    outputs = generator.generate(SOURCES[:2], beam_size=1, max_new_tokens=500)
    assert all(len(ids) <= MAX_POSITIONS for ids in outputs)


def test_a_group_query_step_writes_the_caches_in_place_and_grows_them_when_full(
    generator: OnnxGenerator,
) -> None:
    """A group_query step returns the caches it was given, with each row's new position written
    at its own column (rows at different positions), and grows them by CACHE_GROWTH_COLUMNS
    only when a row reached their end; a masked step returns new, one-column-longer caches."""
    state = generator.start(generator.pad(SOURCES))
    tokens = np.full(len(SOURCES), generator.sos_id, np.int64)
    _, state = generator.step(state, tokens)
    if not generator.left_aligned:
        assert state.self_k.shape[3] == 1
        _, after = generator.step(state, tokens)
        assert after.self_k is not state.self_k and after.self_k.shape[3] == 2
        return
    assert state.self_k.shape[3] == 1 + CACHE_GROWTH_COLUMNS  # grown from empty, with room
    state.position[:] = [1, 3, 0, 5]  # rows at different steps
    before = state.self_k.copy()
    _, after = generator.step(state, tokens + 5)  # another token: row 2 rewrites column 0
    assert after.self_k is state.self_k  # in place: no copy
    written = np.flatnonzero((before != after.self_k).any(axis=(0, 2, 4)).reshape(-1))
    columns = after.self_k.shape[3]
    assert sorted(written.tolist()) == [row * columns + t for row, t in enumerate([1, 3, 0, 5])]
    state.position[:] = columns - 1  # the last column: still room for this step
    _, after = generator.step(state, tokens)
    assert after.self_k.shape[3] == columns
    state.position[0] = columns  # past the end: grown, the old columns kept
    kept = state.self_k.copy()
    _, after = generator.step(state, tokens)
    assert after.self_k.shape[3] == columns + 1 + CACHE_GROWTH_COLUMNS
    assert np.array_equal(after.self_k[:, 1:, :, : columns - 1], kept[:, 1:, :, : columns - 1])


def test_a_kept_binding_steps_like_a_fresh_one_through_in_place_writes_and_new_arrays(
    generator: OnnxGenerator,
) -> None:
    """A step through a kept binding (the decode batch's) gives the logits and caches of a step
    that binds afresh: tokens rewritten in place are read anew, the caches it grows and a state
    of fewer rows (new arrays) are bound again; the logits array is the binding's own."""
    binding = generator.step_binding()
    if not generator.left_aligned:
        assert binding is None
        return
    assert binding is not None
    kept = generator.start(generator.pad(SOURCES))
    fresh = generator.start(generator.pad(SOURCES))
    tokens = np.full(len(SOURCES), generator.sos_id, np.int64)  # one array, rewritten in place
    first = None
    for step in range(CACHE_GROWTH_COLUMNS + 3):  # past the first growth of the caches
        if step == 4:  # a row leaves: every array is another one, with fewer rows
            kept, fresh = kept.select(np.arange(3)), fresh.select(np.arange(3))
            tokens = tokens[:3].copy()
        logits, kept = generator.step(kept, tokens, binding)
        expected, fresh = generator.step(fresh, tokens)
        assert np.array_equal(logits, expected)
        assert np.array_equal(kept.self_k, fresh.self_k)
        if first is None:
            first = logits
        tokens[:] = logits.argmax(-1)  # in place: the bound tokens
    assert logits is not first  # another row count: another logits array
    again, _ = generator.step(kept, tokens, binding)
    assert again is logits  # the same row count: the same array, overwritten


def test_empty_request_returns_nothing(generator: OnnxGenerator) -> None:
    """No sources, no work and no error."""
    assert generator.generate([], beam_size=4) == []


def test_topk_returns_largest_first() -> None:
    """_topk matches a full descending sort for each row."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 50)).astype(np.float32)
    x[0, :5] = -np.inf  # masked ids never win
    expected = np.argsort(-x, axis=1, kind="stable")[:, :4]
    assert (_topk(x, 4) == expected).all()


def test_log_softmax_handles_masked_entries() -> None:
    """-inf logits get zero probability; the rest sum to one."""
    x = np.array([[0.0, 1.0, -np.inf, 2.0]], dtype=np.float32)
    p = np.exp(_log_softmax(x))
    assert p[0, 2] == 0.0
    assert abs(float(p.sum()) - 1.0) < 1e-6
