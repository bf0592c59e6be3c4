"""Values changed indirectly are checkpointed current, with their aliasing.

Each pattern is an agent run of two python steps: the first makes the values,
the second changes them in a way the code's names do not show (a library
function, an alias, a helper mutating a global, ``globals()``, ``exec``). The
run's saved variables are then restored into a fresh namespace and compared
with the live ones; aliasing (``a is b``, two lists holding one dict) must hold
too. A few patterns also go through a real kernel kill and resume.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from jupyter_agent.loop.runs import load_state
from jupyter_agent.namespace.tracking import restore
from jupyter_agent.store.duckdb.store import DuckDBStore as Store
from jupyter_agent.testing import ScriptedServer

from ..conftest import BOTH_BACKENDS
from .harness import record

# (name, first step, second step, check: an expression whose repr must match live and restored)
PATTERNS: list[tuple[str, str, str, str]] = [
    (
        "random.shuffle",
        "import random\nitems = list(range(10))",
        "random.seed(1)\nrandom.shuffle(items)",
        "items",
    ),
    ("heapq.heappush", "import heapq\nheap = []", "heapq.heappush(heap, 5)", "heap"),
    (
        "loop variable",
        "rows = [{'id': 1}, {'id': 2}]",
        "for r in rows:\n    r['seen'] = True",
        "rows",
    ),
    ("alias append", "a = [1]", "b = a\nb.append(42)", "(a, b, a is b)"),
    (
        "helper mutates a global",
        "log = []\ndef add(x):\n    log.append(x)",
        "add(3)",
        "log",
    ),
    ("globals()", "counter = 0", "globals()['counter'] += 1", "counter"),
    ("bound method", "nums = [3, 1, 2]", "sort_it = nums.sort\nsort_it()", "nums"),
    (
        "setdefault through an alias",
        "cfg = {}",
        "d2 = cfg\nd2.setdefault('k', []).append(1)",
        "(cfg, d2 is cfg)",
    ),
    (
        "inner list of a dict",
        "data = {'x': [1]}\ninner = data['x']",
        "inner.append(2)",
        "(data, inner is data['x'])",
    ),
    (
        "numpy ufunc out=",
        "import numpy as np\narr = np.zeros(3)",
        "np.add(arr, 1, out=arr)",
        "arr.tolist()",
    ),
    (
        "numpy view written",
        "import numpy as np\narr2 = np.zeros(3)\nv = arr2[:2]",
        "v[:] = 7",
        "(arr2.tolist(), v.tolist())",
    ),
    ("map over append", "out = []", "list(map(out.append, range(3)))", "out"),
    (
        "object mutated by a helper",
        "class Acc:\n    def __init__(self):\n        self.n = 0\nacc = Acc()",
        "def bump(o):\n    o.n += 1\nbump(acc)",
        "acc.n",
    ),
    (
        "setattr",
        "class Box:\n    pass\nobj = Box()\nobj.name = 'a'",
        "setattr(obj, 'name', 'z')",
        "obj.name",
    ),
    (
        "deque rotated by a bound method",
        "from collections import deque\nq = deque([1, 2, 3])",
        "rot = q.rotate\nrot(1)",
        "q",
    ),
    (  # sorted: a set's order differs between processes (hash randomization)
        "set |= through an alias",
        "tags = {'a'}",
        "s2 = tags\ns2 |= {'b'}",
        "(sorted(tags), s2 is tags)",
    ),
    (
        "two lists holding one dict",
        "shared = {'v': 1}\nl1 = [shared]\nl2 = [shared]",
        "l1[0]['v'] = 2",
        "(shared, l2, l1[0] is l2[0], shared is l2[0])",
    ),
    ("exec of a string", "names = []", "exec(\"names.append('x')\")", "names"),
    ("map over set.add", "bucket = set()", "any(map(bucket.add, 'xy'))", "sorted(bucket)"),
    (
        "defaultdict through a helper",
        "from collections import defaultdict\ncounts = defaultdict(int)\n"
        "def tally(w):\n    counts[w] += 1",
        "for w in 'aab':\n    tally(w)",
        "dict(counts)",
    ),
    (
        "bytearray through a memoryview",
        "buf = bytearray(b'abc')",
        "memoryview(buf)[0] = 120",
        "bytes(buf)",
    ),
    (
        "cycle through an alias",
        "node = {}\nnode['self'] = node",
        "n2 = node\nn2['v'] = 1",
        "(node['v'], node['self'] is node, n2 is node)",
    ),
    (
        "loop over a tuple of lists",
        "x1 = [1]\nx2 = [2]",
        "for lst in (x1, x2):\n    lst.clear()",
        "(x1, x2)",
    ),
    (
        "numpy sort in a helper",
        "import numpy as np\nvals = np.array([3, 1, 2])\ndef srt(a):\n    a.sort()",
        "srt(vals)",
        "vals.tolist()",
    ),
    (
        "pandas frame changed by a helper",
        "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\n"
        "def clean(frame):\n    frame.loc[0, 'a'] = 99",
        "clean(df)",
        "df['a'].tolist()",
    ),
    (
        "string column item replaced at a freed address",
        "import pandas as pd\nnames = pd.DataFrame({'s': [f'row{i}' for i in range(9000)]})",
        "names.loc[0, 's'] = None\nnames.loc[0, 's'] = ''.join(['ro', 'wX'])",
        "names['s'].tolist()[:3]",
    ),
    (
        "list inside a large object array",
        "import numpy as np\ncells = np.empty(9000, dtype=object)\nfor i in range(9000):\n"
        "    cells[i] = [i]",
        "def grow(c):\n    c[7].append(0)\ngrow(cells)",
        "cells[7]",
    ),
]


def cell(name: str, first: str, second: str) -> str:
    return (
        f"%%agent --model offline --name {name}\n```python\n{first}\n```\n```python\n{second}\n```"
    )


def quiet(shell, code: str):  # type: ignore[no-untyped-def]
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        return shell.run_cell(code)


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    store = tmp_path / "store" / "agents.duckdb"
    monkeypatch.setenv("JUPYTER_AGENT_STORE", str(store))
    monkeypatch.chdir(tmp_path)
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "jupyter_agent")
    shell.run_line_magic("config", "AgentMagics.store = ''")
    shell.store_path = store
    yield shell
    shell.run_line_magic("reset", "-f")


def test_indirect_mutations_are_restored_current(ip) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("numpy")
    pytest.importorskip("pandas")
    stale: dict[str, tuple[str, str]] = {}
    for i, (label, first, second, check) in enumerate(PATTERNS):
        ip.run_line_magic("reset", "-f")
        result = quiet(ip, cell(f"mut{i}", first, second))
        assert result.success, (label, result.error_in_exec)
        live = repr(eval(check, ip.user_ns))
        store = Store(ip.store_path)
        (run,) = store.runs(agent=f"mut{i}")
        fresh: dict = {}
        _, failed = restore(fresh, load_state(store, run).vars, store.blobs)
        assert not failed, (label, failed)
        try:
            restored = repr(eval(check, fresh))
        except Exception as exc:  # a name missing from the restore is stale too
            restored = f"{type(exc).__name__}: {exc}"
        if restored != live:
            stale[label] = (live, restored)
    record(
        "state",
        "indirect mutations",
        injection=f"{len(PATTERNS)} patterns: shuffle, heappush, aliases, helpers mutating "
        "globals, globals(), exec, numpy out=/views, pandas through a helper, a large "
        "string column …",
        trials=len(PATTERNS),
        completed=len(PATTERNS) - len(stale),
        lost=len(stale),
        duplicated=0,
        outcome="restored into a fresh namespace: every value current, aliasing kept",
    )
    assert len(PATTERNS) >= 20
    assert stale == {}, f"{len(stale)} stale values: {stale}"


KERNEL_FIRST = """\
import heapq, random
items = list(range(10))
heap = []
a = [1]
log = []
def add(x):
    log.append(x)
shared = {'v': 1}
l1 = [shared]
l2 = [shared]
print('made')
"""
KERNEL_SECOND = """\
random.seed(1)
random.shuffle(items)
heapq.heappush(heap, 5)
b = a
b.append(42)
add(3)
l1[0]['v'] = 2
print('changed')
"""
KERNEL_CHECK = "(items, heap, a, a is b, log, shared, l2, l1[0] is l2[0], shared is l2[0])"


def kernel_script(pause: bool) -> list[dict]:
    def tool(code: str) -> dict:
        return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}

    third = ("import time; time.sleep(30)\n" if pause else "") + "print('third')"
    return [tool(KERNEL_FIRST), tool(KERNEL_SECOND), tool(third), {"content": "Finished."}]


@BOTH_BACKENDS
def test_indirect_mutations_survive_a_kernel_kill(  # type: ignore[no-untyped-def]
    kernel_factory, scripted: ScriptedServer, backend: str
) -> None:
    expected: dict = {}
    exec(KERNEL_FIRST, expected)
    exec(KERNEL_SECOND, expected)
    want = repr(eval(KERNEL_CHECK, expected))

    cell = "%%agent --model scripted\nMutate things."
    scripted.set_script(kernel_script(pause=True))
    k1 = kernel_factory()
    run = k1.start(cell, cell_id="mut-kill")
    k1.wait_for(run, "time.sleep(30)")
    time.sleep(0.5)
    k1.kill()

    scripted.set_script(kernel_script(pause=False))
    k2 = kernel_factory()
    resumed = k2.run(cell, cell_id="mut-kill")
    assert resumed.status == "ok", resumed.text
    assert "Variables restored from the store:" in resumed.text
    assert "Finished." in resumed.text
    got = k2.run(f"print(repr({KERNEL_CHECK}))").stdout.strip()
    assert got == want
