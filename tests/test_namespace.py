"""Change detection, alias groups, closed files and secret encodings of namespace checkpoints."""

from __future__ import annotations

import threading
from pathlib import Path

import dill
import pytest

from jupyter_agent.core.redaction import contains_secret
from jupyter_agent.core.state import RUNNING, Delta, RunState
from jupyter_agent.namespace import fingerprint as fingerprints
from jupyter_agent.namespace import tracking as namespace

SECRET = "sk-live-abcdefghijklmnop0123"


class Steps:
    """A namespace with a tracker and an in-memory store, stepped like the agent does."""

    def __init__(self, **values: object) -> None:
        self.ns: dict = dict(values)
        self.tracker = namespace.Tracker()
        self.state = RunState()
        self.known = self.state.vars  # name -> hash, as the run's folded state holds them
        self.blobs: dict[str, bytes] = {}
        self.tracker.begin(self.ns, self.known)

    def step(self, code: str = "", secrets: list[str] | None = None) -> namespace.Snapshot:
        self.tracker.begin(self.ns, self.known)  # a no-op after the first step, as in the agent
        exec(code, self.ns)
        snap = self.tracker.snapshot(self.ns, self.known, secrets or [])
        self.blobs.update(snap.blobs)
        self.state.apply(
            Delta(vars=snap.vars), step=0, kind="tool_result", status=RUNNING, tokens=0
        )
        return snap

    def restored(self) -> dict:
        fresh: dict = {}
        _, failed = namespace.restore(fresh, self.known, lambda hs: {h: self.blobs[h] for h in hs})
        assert failed == {}
        return fresh


def test_indirect_changes_are_seen_and_unchanged_values_are_not_serialized(monkeypatch):
    s = Steps()
    s.step("import random, heapq\nitems = list(range(8))\nheap = []\nbig = list(range(1000))")
    calls: list[object] = []
    real = namespace.serialize
    monkeypatch.setattr(namespace, "serialize", lambda v: calls.append(v) or real(v))
    snap = s.step("random.seed(3)\nrandom.shuffle(items)\nheapq.heappush(heap, 5)")
    assert set(snap.vars) == {"items", "heap"}
    assert calls and all(v is s.ns["heap"] or v is s.ns["items"] for v in calls)
    calls.clear()
    assert s.step("print('nothing changes')").vars == {} and calls == []
    fresh = s.restored()
    assert fresh["items"] == s.ns["items"] and fresh["heap"] == [5]


def test_alias_groups_keep_identity_through_a_restore():
    s = Steps()
    s.step("shared = {'v': 1}\nl1 = [shared]\nl2 = [shared]\na = [1]\nb = a\nalone = [2]")
    s.step("l1[0]['v'] = 2\nb.append(3)")
    fresh = s.restored()
    assert fresh["a"] is fresh["b"] and fresh["a"] == [1, 3]
    assert fresh["l1"][0] is fresh["l2"][0] is fresh["shared"] and fresh["shared"] == {"v": 2}
    assert fresh["alone"] == [2]
    # A group is one blob; a value sharing nothing is stored bare.
    assert s.known["a"] == s.known["b"] != s.known["alone"]
    assert not isinstance(namespace.deserialize(s.blobs[s.known["alone"]]), namespace._Group)


def test_a_new_alias_and_a_broken_alias_are_both_seen():
    s = Steps(a=[1], c=[9])
    s.step("b = a")
    s.step("c.append(a)")  # c now holds a: a, b and c are one group
    fresh = s.restored()
    assert fresh["c"][1] is fresh["a"] is fresh["b"]
    s.step("b = list(b)\nc.pop()")  # no longer shared
    fresh = s.restored()
    assert fresh["a"] == fresh["b"] and fresh["a"] is not fresh["b"] and fresh["c"] == [9]


def test_a_group_member_that_cannot_be_saved_is_reported_by_name_and_the_rest_saved():
    s = Steps()
    snap = s.step(
        "import threading\nlock_holder = [threading.Lock]\nitems = [1]\n"
        f"pair = [items, (i for i in range(3))]\nkeyed = [items, {SECRET!r}]",
        secrets=[SECRET],
    )
    assert "generator" in snap.unsaved["pair"]
    assert "secret" in snap.unsaved["keyed"]
    assert "items" in snap.vars and "lock_holder" in snap.vars
    assert SECRET.encode() not in b"".join(s.blobs.values())


def test_without_a_record_every_name_is_checked_and_after_begin_saved_names_are():
    ns = {"x": [1], "y": [2]}
    first = namespace.Tracker().snapshot(ns, {}, [])
    assert set(first.vars) == {"x", "y"}
    known = {n: h for n, h in first.vars.items() if h}
    ns["x"].append(2)  # changed between two runs, by the user
    tracker = namespace.Tracker()
    tracker.begin(ns, known)
    again = tracker.snapshot(ns, known, [])
    assert set(again.vars) == {"x"}  # y re-checked, its bytes unchanged


def test_names_the_code_binds_are_saved_even_when_the_value_was_there():
    tracker = namespace.Tracker()
    ns = {"blob": b"x" * 100}
    tracker.begin(ns)
    assert set(tracker.snapshot(ns, {}, [], touched={"blob"}).vars) == {"blob"}


def test_deleted_names_and_numpy_and_pandas_changes():
    np = pytest.importorskip("numpy")
    s = Steps(arr=np.zeros(1000))
    s.step("arr2 = arr\ngone = [1]")
    assert s.step("arr[5] = 1.0\ndel gone").vars.keys() == {"arr", "arr2", "gone"}
    assert s.known.get("gone") is None
    assert s.step("x = arr.sum()").vars.keys() == {"x"}
    fresh = s.restored()
    assert fresh["arr"][5] == 1.0 and fresh["arr"] is fresh["arr2"]
    pd = pytest.importorskip("pandas")
    s.ns["df"] = pd.DataFrame({"a": range(5), "s": list("abcde")})
    s.step()
    assert s.step("df.iloc[2, 0] = 99").vars.keys() == {"df"}
    assert s.step("df.loc[0, 's'] = 'z'").vars.keys() == {"df"}
    assert s.step("df.index = df.index + 1").vars.keys() == {"df"}
    assert s.step("y = len(df)").vars.keys() == {"y"}
    assert s.restored()["df"].equals(s.ns["df"])


def test_closed_files_are_skipped_silently_and_open_ones_reported(tmp_path: Path):
    with open(tmp_path / "out.txt", "w") as f:
        f.write("data")
    handle = open(tmp_path / "log.txt", "a")  # noqa: SIM115
    try:
        ns = {"f": f, "files": [f, f], "handle": handle, "mixed": [f, 1]}
        snap = namespace.snapshot(ns, ns, {}, [])
        assert set(snap.unsaved) == {"handle", "mixed"}
        assert "f" not in snap.vars and "files" not in snap.vars
        tracker = namespace.Tracker()
        tracker.begin({})
        snap = tracker.snapshot(ns, {}, [])
        assert set(snap.unsaved) == {"handle", "mixed"}
        # A saved name that now holds only a closed file is no longer state.
        assert namespace.snapshot({"f": f}, ["f"], {"f": "h"}, []).vars == {"f": None}
    finally:
        handle.close()
    assert (tmp_path / "out.txt").read_text() == "data"


def test_values_saved_before_alias_groups_are_restored():
    ns: dict = {}
    old = {"h1": dill.dumps([1, 2], protocol=5), "h2": dill.dumps(threading, protocol=5)}
    restored, failed = namespace.restore(ns, {"a": "h1", "b": "h1", "t": "h2"}, lambda hs: old)
    assert failed == {} and restored == ["a", "b", "t"]
    assert ns["a"] == ns["b"] == [1, 2] and ns["a"] is not ns["b"]  # equal, not aliased


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_secrets_are_found_in_every_utf_encoding_and_byte_order(encoding: str):
    data = b"\x00prefix" + SECRET.encode(encoding) + b"suffix"
    assert contains_secret(data, [SECRET])
    assert not contains_secret(b"prefix" + "sk-other-value-000".encode(encoding), [SECRET])


def test_big_endian_secrets_in_values_are_not_stored():
    np = pytest.importorskip("numpy")
    ns = {
        "be16": SECRET.encode("utf-16-be"),
        "be32": SECRET.encode("utf-32-be"),
        "arr": np.array([SECRET], dtype=">U40"),
    }
    snap = namespace.snapshot(ns, ns, {}, [SECRET])
    assert snap.blobs == {} and set(snap.unsaved) == {"be16", "be32", "arr"}


def test_an_agent_does_not_save_what_another_agents_code_changed():
    from jupyter_agent.namespace.lock import NamespaceLock

    lock = NamespaceLock()
    ns: dict = {}
    alpha, beta = namespace.Tracker(), namespace.Tracker()
    saved: dict[str, set[str]] = {"alpha": set(), "beta": set()}

    def turn(agent: str, tracker: namespace.Tracker, code: str) -> None:
        tracker.begin(ns, ())
        with lock.turn(agent, lambda _: None) as others_ran:
            if others_ran:
                tracker.rebase(ns)
            exec(code, ns)
            saved[agent] |= set(tracker.snapshot(ns, {}, [], set()).vars)

    turn("alpha", alpha, "a0 = 1")
    turn("beta", beta, "b0 = 2")
    turn("alpha", alpha, "a1 = 3")  # beta's b0 came in meanwhile: not alpha's
    turn("beta", beta, "b1 = 4")  # alpha's a1 likewise
    assert saved == {"alpha": {"a0", "a1"}, "beta": {"b0", "b1"}}


def test_a_large_string_column_is_fingerprinted_by_addresses_and_changes_are_seen(monkeypatch):
    pd = pytest.importorskip("pandas")
    rows = fingerprints.ADDRESS_ITEMS * 2
    s = Steps(df=pd.DataFrame({"s": [f"row{i}" for i in range(rows)]}), n=rows)
    s.step()
    walked: list[int] = []
    real = fingerprints._Walker._items
    monkeypatch.setattr(
        fingerprints._Walker,
        "_items",
        lambda self, items: walked.append(len(items)) or real(self, items),
    )
    assert s.step("m = len(df)").vars.keys() == {"m"}
    assert max(walked, default=0) < fingerprints.ADDRESS_ITEMS  # the column's items are not read
    # A freed item's address taken by a new string in the same step: seen, as the
    # previous fingerprint holds the old item alive.
    # (A string made at run time, not a constant of the code, to take the freed address.)
    assert s.step("df.loc[0, 's'] = None\ndf.loc[0, 's'] = ''.join(['ro', 'wX'])").vars.keys() == {
        "df"
    }
    s.step("import numpy as np\nobjs = np.array([f'item-{i:06d}' for i in range(n)], dtype=object)")
    assert s.step("objs[0] = None\nobjs[0] = ''.join(['it', 'em-X'])").vars.keys() == {"objs"}
    assert s.step("df.loc[1, 's'] = 'row1'").vars == {}  # an equal string: same bytes, not stored
    assert s.restored()["df"].equals(s.ns["df"])


def test_object_arrays_of_mutable_items_are_still_read_item_by_item():
    pytest.importorskip("numpy")
    s = Steps(n=fingerprints.ADDRESS_ITEMS)
    s.step(
        "import numpy as np\ncells = np.empty(n, dtype=object)\nfor i in range(n):\n    cells[i] = []"
    )
    assert s.step("cells[7].append(1)").vars.keys() == {"cells"}
    assert s.restored()["cells"][7] == [1]


def test_a_step_that_ran_no_code_fingerprints_nothing_and_the_next_one_sees_changes(monkeypatch):
    tracker = namespace.Tracker()
    ns: dict = {"items": [1]}
    tracker.begin(ns)
    tracker.snapshot(ns, {}, [])
    ns["items"].append(2)  # e.g. the user's cell, while a background run called an MCP tool
    calls: list[object] = []
    real = fingerprints.fingerprint
    monkeypatch.setattr(
        fingerprints, "fingerprint", lambda v, k=None: calls.append(v) or real(v, k)
    )
    assert tracker.snapshot(ns, {}, [], ran=False).vars == {} and calls == []
    assert set(tracker.snapshot(ns, {}, []).vars) == {"items"}


def test_large_changed_values_are_left_to_a_saving_thread_which_saves_the_same_bytes():
    import numpy as np

    big = bytearray(namespace.SAVE_LATER_BYTES)
    steps = Steps(big=big, alias=big, arr=np.zeros(10), small=[1])
    later = namespace.SAVE_LATER_BYTES
    steps.tracker.begin(steps.ns, ())
    exec("big[0] = 1\nsmall.append(2)\narr[0] = 1", steps.ns)
    inline = namespace.Tracker()
    inline.begin({}, ())
    whole = inline.snapshot(steps.ns, {}, [])  # every name changed, all serialized here
    snap = steps.tracker.snapshot(steps.ns, {}, [], later_from=later)
    assert snap.later == [["alias", "big"]]  # one alias group, by its size in memory
    assert set(snap.vars) == {"arr", "small"}  # the small ones are serialized on the step
    written: dict[str, bytes] = {}
    ended = threading.Event()
    saving = namespace.Saving(steps.ns, snap.later, {}, [], written.__setitem__, ended.set)
    saved = saving.result()
    assert ended.is_set() and written == saved.blobs
    assert saved.vars == {n: whole.vars[n] for n in ("alias", "big")}
    assert saved.blobs == {h: whole.blobs[h] for h in saved.vars.values()}
    fresh: dict = {}
    namespace.restore(fresh, saved.vars, lambda hs: {h: saved.blobs[h] for h in hs})
    assert fresh["big"] is fresh["alias"] and fresh["big"][0] == 1
    assert namespace.size_in_memory(np.zeros(1000)) == 8000
    assert namespace.size_in_memory(object()) == 0


def test_other_agents_code_waits_while_an_agents_values_are_saved():
    from jupyter_agent.namespace.lock import NamespaceLock

    lock = NamespaceLock()
    said: list[str] = []
    with lock.turn("alpha", said.append):
        saved = lock.saving("alpha")  # taken during alpha's turn, ended by the saving thread
    entered = threading.Event()

    def beta() -> None:
        with lock.turn("beta", said.append):
            entered.set()

    thread = threading.Thread(target=beta)
    thread.start()
    assert not entered.wait(0.3)
    assert said == ["waiting for the namespace (agent alpha is saving its variables)"]
    saved()
    assert entered.wait(5)
    thread.join()


def test_a_secret_is_found_anywhere_in_a_large_value_even_across_search_windows():
    size = 5 << 20  # searched a window at a time
    for pos, encoding in ((0, "utf-8"), ((1 << 20) - 5, "utf-8"), ((2 << 20) - 3, "utf-16-le")):
        data = bytearray(size)
        needle = SECRET.encode(encoding)
        data[pos : pos + len(needle)] = needle
        assert contains_secret(bytes(data), [SECRET]), (pos, encoding)
    assert not contains_secret(bytes(size), [SECRET])


def test_an_alias_group_saved_before_the_namespace_module_moved_is_restored(monkeypatch):
    # The previous release pickled groups by reference as jupyter_agent.namespace._Group.
    import jupyter_agent.namespace as package

    with monkeypatch.context() as m:
        m.setattr(namespace._Group, "__module__", "jupyter_agent.namespace")
        m.setattr(package, "_Group", namespace._Group, raising=False)
        data = namespace.serialize(namespace._Group(a=[1], b=[2]))
    assert b"jupyter_agent.namespace.tracking" not in data and not hasattr(package, "_Group")
    fresh: dict = {}
    restored, failed = namespace.restore(fresh, {"a": "h", "b": "h"}, lambda hs: {"h": data})
    assert (restored, failed) == (["a", "b"], {})
    assert fresh == {"a": [1], "b": [2]}
