"""The server's heap after a model change (service/heap.py): garbage of the change is collected,
what survives is frozen out of the collector's walks, and a later settle can free a frozen
object that has become garbage since (a retired model's sessions)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from service import heap


class Node:
    """A reference cycle: freed by the collector only, never by reference counting."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session's objects stay collectable


def test_settle_collects_garbage_and_freezes_survivors() -> None:
    garbage = weakref.ref(Node())  # only the cycle holds it
    survivor = Node()
    assert garbage() is not None
    heap.settle()
    assert garbage() is None
    assert gc.get_freeze_count() > 0
    assert all(o is not survivor for o in gc.get_objects())  # out of the collector's walks
    gc.collect()  # a full collection leaves frozen objects alone
    assert survivor.me is survivor


def test_a_frozen_object_that_became_garbage_goes_at_the_next_settle() -> None:
    retired = Node()
    gone = weakref.ref(retired)
    heap.settle()
    del retired
    gc.collect()
    assert gone() is not None  # frozen: no collection sees it
    heap.settle()
    assert gone() is None
