"""Which of a run's values were changed in this kernel since the run last saved them.

Resuming, approving or restoring a run puts its saved variables back into the
namespace (:func:`restore_in_kernel`). In a kernel that has held the values all
along, one whose fingerprint is no longer what it was when the run last saved
it there was changed by someone else (the user, while the agent waited for an
approval, or another agent): the kernel's value is kept, and said when it
differs from the run's saved one. So each kernel remembers, per run, the
fingerprint key (:mod:`.fingerprint`) of each value as the run last saved or
restored it there (:class:`Baselines`, filled by the run's
:class:`~.tracking.Tracker`). A kernel with no baseline for a run (a new one,
after a restart) has nothing the user changed since a save in it: the run's
values are restored whatever the kernel holds, so e.g. the agent's class comes
back with its instances after the user redefined it.

Only fingerprint keys are kept, not values, so a baseline holds nothing alive.
A run executes in at most one thread of a kernel at a time (the runtime's
claims), which is the only one to write or read its baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .fingerprint import fingerprints
from .serialize import digest, serialize
from .tracking import restore

#: Name -> fingerprint key of its value as the run last saved or restored it here.
Baseline = dict[str, str | None]


class Baselines:
    """The baselines of the runs that saved or restored values in this kernel, by run id."""

    def __init__(self) -> None:
        self._runs: dict[str, Baseline] = {}

    def of(self, run_id: str) -> Baseline:
        """The run's baseline, for its tracker to keep up to date."""
        return self._runs.setdefault(run_id, {})

    def changed(self, run_id: str, namespace: dict[str, Any], names: Iterable[str]) -> set[str]:
        """The ``names`` whose value in ``namespace`` is not the one the run last saved here.

        A name without a baseline, or whose value cannot be fingerprinted, is not
        known to have changed: it is not listed."""
        baseline = self._runs.get(run_id, {})
        held = [n for n in names if baseline.get(n) is not None and n in namespace]
        prints = fingerprints(namespace, held)
        return {n for n, p in prints.items() if p.key is not None and p.key != baseline[n]}

    def restored(self, run_id: str, namespace: dict[str, Any], names: Iterable[str]) -> None:
        """Restored values are as the run saved them: the baseline of each is its value now."""
        baseline = self.of(run_id)
        for name, p in fingerprints(namespace, names).items():
            baseline[name] = p.key


def restore_in_kernel(
    namespace: dict[str, Any],
    vars: dict[str, str],
    load: Callable[[list[str]], dict[str, bytes]],
    baselines: Baselines,
    run_id: str,
) -> tuple[list[str], dict[str, str], list[str]]:
    """:func:`~.tracking.restore` into a live kernel, whose own changes are never overwritten.

    Returns (restored, failures, differing): a value changed in this kernel since
    the run last saved it here is kept, and listed in ``differing`` when it
    differs from the run's saved value, so the caller can say that the agent's
    view and the kernel's differ.
    """
    changed = baselines.changed(run_id, namespace, vars)
    # Into the namespace itself, in order: a value refers to the classes restored before it.
    restored, failed = restore(namespace, {n: h for n, h in vars.items() if n not in changed}, load)
    baselines.restored(run_id, namespace, restored)
    saved: dict[str, Any] = {}
    restore(saved, {n: vars[n] for n in changed}, load)  # only to compare
    differing = sorted(n for n in saved if _differs(namespace[n], saved[n]))
    return restored, failed, differing


def _differs(live: Any, saved: Any) -> bool:
    """Whether a live value is known to differ from a saved one (compared as stored)."""
    try:
        return digest(serialize(live)) != digest(serialize(saved))
    except Exception:
        return False  # cannot be compared: say nothing rather than guess
