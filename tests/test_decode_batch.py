"""service/engines/decode_batch.py: sequences at different steps share decoder runs, and each
decodes to exactly the ids it gets alone (greedy and beam search), whoever joins or leaves.

The graphs are the tiny translator of tests/conftest.py (exported by the real export pipeline).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.engines.cache_binding import CACHE_GROWTH_COLUMNS
from service.engines.decode_batch import TRIM_SLACK_COLUMNS, DecodeBatch
from service.engines.decode_io import Join
from service.engines.generation import OnnxGenerator
from service.engines.translator_graphs import GROUP_QUERY, MASKED


@pytest.fixture(scope="module", params=[GROUP_QUERY, MASKED])
def generator(
    request: pytest.FixtureRequest, model_repository: Path, masked_translator: Path
) -> OnnxGenerator:
    """Both decoder kinds (service/engines/generation.py): their cache layouts differ."""
    if request.param == MASKED:
        return OnnxGenerator.from_directory(masked_translator)
    generator = OnnxGenerator.from_directory(model_repository / "translator" / "1")
    assert generator.left_aligned  # the export's default for this head size
    return generator


def random_sources(n: int, seed: int, vocab: int = 200) -> list[list[int]]:
    """n sources of 1 to 24 random subword ids, each ending in <eos> (id 2)."""
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(1, 24))] + [2] for _ in range(n)]


def alone(generator: OnnxGenerator, join: Join) -> list[int]:
    return generator.generate([join.src_ids], join.beam_size, join.max_new_tokens)[0]


def run_schedule(
    batch: DecodeBatch,
    arrivals: dict[int, list[Join]],
    leaves: dict[int, list[int]] | None = None,
) -> tuple[dict[int, list[int]], dict[int, list[int]], list[int]]:
    """Step until every sequence finished: `arrivals[step]` join before that step, `leaves[step]`
    are dropped. -> results, greedy tokens as streamed, rows of each step."""
    results: dict[int, list[int]] = {}
    streamed: dict[int, list[int]] = {}
    rows: list[int] = []
    total = sum(len(j) for j in arrivals.values())
    left = sum(len(x) for x in (leaves or {}).values())
    step = 0
    while len(results) + left < total:
        outcomes = batch.step(arrivals.get(step, []), (leaves or {}).get(step, []))
        assert live_rows_are_a_prefix(batch)
        rows.append(batch.rows)
        for o in outcomes:
            if o.token is not None:
                streamed.setdefault(o.seq_id, []).append(o.token)
            if o.result is not None:
                results[o.seq_id] = list(o.result)
        step += 1
        assert step < 500, "the schedule never finished"
    return results, streamed, rows


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_arrivals_decode_as_if_alone(generator: OnnxGenerator, seed: int) -> None:
    """Greedy, beam 2 and beam 4 sequences of mixed lengths and limits join at random steps;
    each one's ids equal decoding it alone, and greedy tokens stream in the same order."""
    rng = random.Random(seed)
    joins = [
        Join(i, src, rng.choice([1, 1, 2, 4]), rng.randint(1, 16))
        for i, src in enumerate(random_sources(14, seed))
    ]
    arrivals: dict[int, list[Join]] = {}
    for join in joins:
        arrivals.setdefault(rng.randint(0, 12), []).append(join)
    results, streamed, rows = run_schedule(DecodeBatch(generator), arrivals)
    for join in joins:
        assert results[join.seq_id] == alone(generator, join), join
        if join.beam_size == 1:
            assert streamed[join.seq_id] == results[join.seq_id]
    assert max(rows) > 4  # sequences really shared steps


def test_finished_sequences_leave_the_same_step(generator: OnnxGenerator) -> None:
    """A sequence limited to 2 tokens is answered after 2 steps and its row leaves, while a
    16-token one keeps decoding (rows 2 -> 1), then the batch is empty."""
    short, long = random_sources(2, 7)
    batch = DecodeBatch(generator)
    first = batch.step([Join(0, short, 1, 2), Join(1, long, 1, 16)], [])
    assert [o.result for o in first] == [None, None] and batch.rows == 2
    second = batch.step([], [])
    assert second[0].seq_id == 0 and second[0].result is not None and len(second[0].result) == 2
    assert batch.rows == 1
    for _ in range(14):
        batch.step([], [])
    assert batch.rows == 0 and batch.slots == 0 and batch.cache_tokens == 0


def test_leaving_frees_rows_and_leaves_others_unchanged(generator: OnnxGenerator) -> None:
    """Cancelled sequences (one greedy, one beam 4) leave at the next step, freeing their rows;
    the others still decode to their alone ids."""
    joins = [Join(i, src, (1, 4, 4, 1)[i], 16) for i, src in enumerate(random_sources(4, 3))]
    batch = DecodeBatch(generator)
    results, _, rows = run_schedule(batch, {0: joins[:2], 3: joins[2:]}, {5: [1, 3]})
    assert rows[3] == 10 and rows[5] == 5  # 1+4+4+1 rows, then 1 and 3 gone
    assert set(results) == {0, 2}
    for join in (joins[0], joins[2]):
        assert results[join.seq_id] == alone(generator, join)


def live_rows_are_a_prefix(batch: DecodeBatch) -> bool:
    """Every live sequence's rows are distinct slots below `rows`, owned by it; the rest spare."""
    held = sorted(r for s in batch.sequences.values() for r in s.rows.tolist())
    owners = [batch.owner[r] for r in range(batch.slots)]
    return (
        held == list(range(batch.rows))
        and all(owners[r] == s.seq_id for s in batch.sequences.values() for r in s.rows.tolist())
        and all(o is None for o in owners[batch.rows :])
    )


def test_a_joiner_reuses_a_free_row_in_place(generator: OnnxGenerator) -> None:
    """One of four sequences leaves and another joins: the last live row moves into the
    leaver's, the joiner takes the slot after it (the arrays keep 4 slots, nothing is rebuilt),
    and everyone still decodes to their alone ids."""
    joins = [Join(i, src, 1, 16) for i, src in enumerate(random_sources(5, 11))]
    batch = DecodeBatch(generator)
    results: dict[int, list[int]] = {}

    def collect(outcomes: list) -> None:
        results.update({o.seq_id: o.result for o in outcomes if o.result is not None})

    collect(batch.step(joins[:4], []))
    collect(batch.step([], []))
    live = batch.rows
    collect(batch.step([joins[4]], [1]))
    assert batch.slots == 4 and live_rows_are_a_prefix(batch)  # no row added
    if 4 in batch.sequences:  # (unless it already finished: a random model may stop at once)
        assert batch.sequences[4].rows.tolist() == [live - 1]  # the slot after the others
    while batch.sequences:
        collect(batch.step([], []))
        assert live_rows_are_a_prefix(batch)
    for join in joins:
        if join.seq_id != 1:
            assert results[join.seq_id] == alone(generator, join), join.seq_id


def test_leavers_rows_go_and_unneeded_columns_are_cut(generator: OnnxGenerator) -> None:
    """When the sequence with the longest source leaves, its row stops running (the other
    moves into it) and its source columns are cut (keeping the masked tail column); cache
    columns no live row needs are cut."""
    from service.engines.generation import MASKED_TAIL_COLUMNS as TAIL

    short, long = [5, 2], [5] * 30 + [2]
    batch = DecodeBatch(generator)
    batch.step([Join(0, long, 1, 16)], [])
    for _ in range(10):
        batch.step([], [])
    batch.step([Join(1, short, 1, 16)], [])
    assert batch.rows == 2 and batch.state is not None and batch.state.cross_k.shape[3] == 31 + TAIL
    batch.step([], [0])
    assert batch.rows == 1 and batch.sequences[1].rows.tolist() == [0]
    assert batch.state.cross_k.shape[3] == 2 + TAIL
    headroom = CACHE_GROWTH_COLUMNS if generator.left_aligned else 0  # for in-place writes
    assert batch.state.self_k.shape[3] < 2 + headroom + TRIM_SLACK_COLUMNS
    assert batch.cache_tokens == batch.slots * (2 + TAIL + batch.state.self_k.shape[3])


def test_graphs_that_cannot_mix_steps_are_refused(generator: OnnxGenerator) -> None:
    """A decoder exported before step scheduling cannot share steps: a clear error, not wrong
    output."""
    old = OnnxGenerator(generator.encoder, generator.decoder)
    old.mixed_steps = False
    with pytest.raises(ValueError, match="re-export"):
        DecodeBatch(old)


def test_joiners_encoded_on_another_thread_beside_a_step_decode_as_if_alone(
    generator: OnnxGenerator,
) -> None:
    """The scheduler's encode-ahead: joiners are encoded on a second thread while the batch
    steps, then join at the next step with their encoded runs; a joiner dropped from its run
    (`without`: its client left) never joins, and every other sequence's ids equal decoding it
    alone, greedy and beam."""
    rng = random.Random(3)
    joins = [
        Join(i, src, rng.choice([1, 1, 4]), rng.randint(2, 14))
        for i, src in enumerate(random_sources(12, 3))
    ]
    batch = DecodeBatch(generator)
    results: dict[int, list[int]] = {}
    waves = [joins[:3], joins[3:7], joins[7:9], joins[9:]]
    dropped = joins[5].seq_id
    with ThreadPoolExecutor(1) as encoder:
        outcomes = batch.step(waves[0], [])
        for wave in waves[1:]:
            pending = encoder.submit(batch.encode, wave)
            outcomes += batch.step([], [])  # decodes while the encoder runs
            runs = [run.without({dropped}) for run in pending.result()]
            outcomes += batch.step([], [], [run for run in runs if run is not None])
        for _ in range(200):
            if not batch.sequences:
                break
            outcomes += batch.step([], [])
    results = {o.seq_id: list(o.result) for o in outcomes if o.result is not None}
    assert dropped not in results
    for join in joins:
        if join.seq_id != dropped:
            assert results[join.seq_id] == alone(generator, join), join


def test_a_row_has_the_same_bits_alone_and_beside_a_longer_source(
    generator: OnnxGenerator,
) -> None:
    """Decoder logits of a source alone equal, to the bit, its logits beside a longer source
    (its memory then padded), step after step: every row keeps a masked memory column
    (MASKED_TAIL_COLUMNS). With none, ONNX Runtime's cross-attention gave other last bits, and
    an int8 decoder rounded them into another beam (stop 34). Compaction keeps the column too."""
    import numpy as np

    from service.engines.generation import MASKED_TAIL_COLUMNS

    assert MASKED_TAIL_COLUMNS >= 1
    for source in random_sources(6, seed=11):
        longer = source[:-1] * 3 + [2]
        alone_state = generator.start(np.array([source]))
        pair_state = generator.start(generator.pad([source, longer]))
        assert alone_state.memory_mask.shape[1] == len(source) + MASKED_TAIL_COLUMNS
        tokens = np.array([generator.sos_id or 0])
        for _ in range(6):
            alone_logits, alone_state = generator.step(alone_state, tokens)
            pair_logits, pair_state = generator.step(pair_state, np.concatenate([tokens, tokens]))
            assert np.array_equal(alone_logits[0], pair_logits[0])
            tokens = alone_logits[:, 4:].argmax(axis=1) + 4
    batch = DecodeBatch(generator)
    short, long_ = random_sources(2, seed=12)
    long_ = long_[:-1] * 3 + [2]
    batch.step([Join(0, short, 1, 3), Join(1, long_, 1, 40)], [], [])
    for _ in range(6):  # the short one leaves; compaction cuts the source columns to the longest
        batch.step([], [], [])
    assert batch.state is not None
    assert batch.state.memory_mask.shape[1] >= len(long_) + MASKED_TAIL_COLUMNS
