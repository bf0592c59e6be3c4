"""A run's history: whose checkpoints, up to where, make up what a run continues.

A fork is a run whose history starts with its parent's checkpoints up to the
fork point (inclusive), and the parent may be a fork itself. The loop folds a
history into a run's state, the store counts its steps, the timeline lists its
entries and the cell output counts where a resumed run stands: all of them walk
it here, so a fork is followed the same way everywhere.

The walk is pure: it is given the run and a way to look its ancestors up (a
store's ``run``, a dict of rows already read), and does no reading of its own.

**A missing ancestor** (a run deleted while a fork of it was kept, or lost to a
damaged store) ends the walk: the missing run's own segment is still part of the
history (it holds no checkpoint any more, so nothing comes of it), and what it
was forked from is unknown. Lists, counts and timelines therefore show what is
left of such a history. Only where the history must be whole, to fold a state
from it (``whole=True``), is it refused instead, with the error saying which run
was deleted: a fold without its beginning would make up a conversation that
never happened. A parent seen twice (a cycle, which no store writes) ends the walk
too, before it is repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import StoreError

#: ``(run id, up to checkpoint)`` pairs, oldest first; None: the run's every checkpoint.
Segments = list[tuple[str, int | None]]


class Forked(Protocol):
    """What the walk reads of a run: its id and where it was forked from, if it was."""

    @property
    def run_id(self) -> str: ...

    @property
    def parent_run(self) -> str | None: ...

    @property
    def parent_step(self) -> int | None: ...


def segments(
    run: Forked,
    parent_of: Callable[[str], Forked | None],
    *,
    upto: int | None = None,
    whole: bool = False,
) -> Segments:
    """The segments whose checkpoints make up ``run``'s history, oldest first.

    ``parent_of`` looks a run up by id (None when it is missing); ``upto`` ends
    the history at the run's own checkpoint ``upto``. With ``whole``, a missing
    ancestor raises :class:`~jupyter_agent.errors.StoreError` instead of ending
    the walk (see the module's rule).
    """
    out: Segments = [(run.run_id, upto)]
    seen = {run.run_id}
    current: Forked = run
    while current.parent_run and current.parent_run not in seen:
        out.insert(0, (current.parent_run, current.parent_step))
        seen.add(current.parent_run)
        parent = parent_of(current.parent_run)
        if parent is None:
            if whole:
                raise StoreError(
                    f"Run {run.run_id} was forked from run {current.parent_run}, which was deleted."
                )
            break
        current = parent
    return out
