"""Replay of a run that delegated: the child's recorded run answers the ``delegate`` call.

Real kernel, scripted server: ``lead`` delegates to ``alpha`` (which runs a python
call), then answers. The replay runs no child and asks no model: the call is
compared as recorded (agent and task), and its result is the child's recorded answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_agent.testing import ScriptedServer

from .kernels import Kernel
from .test_multi_agent import PARENT, family

pytestmark = pytest.mark.timeout(180)


def test_a_delegating_run_replays_the_same_from_its_childs_recorded_run(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    scripted.set_script(family(log))
    kernel = kernel_factory()
    ran = kernel.run(PARENT, cell_id="lead")
    assert "Lead done: alpha says hi | beta says hi" in ran.text, ran.text
    effects, asked = log.read_text(), len(scripted.requests)

    replayed = kernel.run("%agent replay lead")
    assert "Replay of agent lead" in replayed.text and "the same" in replayed.text, replayed.text
    assert "2 tool calls compared" in replayed.text, replayed.text
    # No child ran again (their python calls wrote nothing), no model was asked.
    assert log.read_text() == effects and len(scripted.requests) == asked
