"""Learning BPE merges with word ends marked, the same on every run.

`tokenizers`' BpeTrainer (0.23) numbers the word-final characters it adds for an
`end_of_word_suffix` ("e</w>", ...) in hash-map order, and breaks ties between pairs of equal
count by those numbers: two trainings on the same text give different ids and, for tied pairs,
a different merge order (2 swapped pairs in 3 runs on Multi30k), so every rebuilt translator
would be a slightly different model. This is the same algorithm (Sennrich et al. 2016, as the
trainer runs it: the most frequent adjacent pair is merged, while it occurs `min_frequency`
times or more, until the vocabulary is full) with ties broken by the pair's text.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise

Pair = tuple[str, str]


def learn_merges(
    words: Iterable[str], suffix: str, max_symbols: int, min_frequency: int
) -> tuple[list[str], list[Pair]]:
    """(alphabet, merges) for `words` (pre-tokenized, with repeats): the alphabet sorted (each
    character, and each word-final one with `suffix`), then merges, best first, until alphabet
    and merges' results make `max_symbols` symbols or no pair occurs `min_frequency` times."""
    counts = Counter(words)
    symbols = [[*word[:-1], word[-1] + suffix] for word in counts]
    freq = [counts[word] for word in counts]
    alphabet = sorted({s for word in symbols for s in word})
    pair_count: Counter[Pair] = Counter()
    where: defaultdict[Pair, set[int]] = defaultdict(set)
    for i, word in enumerate(symbols):
        for pair in pairwise(word):
            pair_count[pair] += freq[i]
            where[pair].add(i)
    # max count first, then the smaller pair text; stale entries are skipped when popped
    heap = [(-n, pair) for pair, n in pair_count.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    known = set(alphabet)  # two merges may make the same symbol ("ab"+"c", "a"+"bc")
    while heap and len(known) < max_symbols:
        negative, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negative:
            continue
        if -negative < min_frequency:
            break
        merges.append(pair)
        known.add(pair[0] + pair[1])
        changed: set[Pair] = set()
        for i in where.pop(pair, ()):
            before = symbols[i]
            after = _merged(before, pair)
            for old in pairwise(before):
                pair_count[old] -= freq[i]
                changed.add(old)
            for new in pairwise(after):
                pair_count[new] += freq[i]
                where[new].add(i)
                changed.add(new)
            symbols[i] = after
        del pair_count[pair]
        for other in changed - {pair}:
            if pair_count[other] > 0:
                heapq.heappush(heap, (-pair_count[other], other))
            else:
                del pair_count[other]
    return alphabet, merges


def _merged(word: list[str], pair: Pair) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
