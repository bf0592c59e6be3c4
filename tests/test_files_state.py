"""Files beside the notebook as part of a run's state, in real kernels.

The agent's code writes files in the kernel's folder (the notebook's folder:
these kernels name no notebook, so it is their working directory, which also
holds the store). Rewind and fork, clicked on the timeline as a browser does,
put the files back as they were at the checkpoint; a file the user changed is
kept and said so; files over the run's cap are listed, not versioned; ignored
folders are not recorded; and a replay whose code writes other content reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_agent.config import FilePolicy
from jupyter_agent.core.files import diff_files
from jupyter_agent.loop.runs import load_state
from jupyter_agent.namespace.files import Folder, Watch
from jupyter_agent.store.open import open_store
from jupyter_agent.testing import ScriptedServer

from .conftest import BOTH_BACKENDS
from .kernels import Kernel
from .test_kernel_timeline import call, click, settle, state, widget_id

pytestmark = pytest.mark.timeout(180)

CELL_ID = "cell-files-1"
CELL = "%%agent -m scripted --name files\nWrite the results."


def write(name: str, text: str) -> str:
    return f"open({name!r}, 'w').write({text!r})"


def results(kernel: Kernel, model_id: str) -> list[int]:
    """The steps of the tool results of the run the widget shows."""
    entries = state(kernel, model_id)["entries"]["items"]
    return [e["step"] for e in entries if e["kind"] == "tool_result"]


def recorded(store_path: Path) -> dict:
    """The files the agent's latest run holds, as its state records them."""
    store = open_store(str(store_path))
    return load_state(store, store.runs(agent="files")[-1]).files


@BOTH_BACKENDS
def test_rewind_puts_files_back_and_keeps_the_users_changes(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path, backend: str
) -> None:
    kernel = kernel_factory()
    scripted.set_script(
        [
            call(write("out.csv", "A")),
            call(write("out.csv", "B") + "\n" + write("new.txt", "later")),
            call(write("notes.txt", "agent")),
            {"content": "Written."},
        ]
    )
    run = kernel.run(CELL, cell_id=CELL_ID)
    assert "Written." in run.text, run.text
    assert (tmp_path / "out.csv").read_text() == "B"
    model_id = widget_id(run)
    first = results(kernel, model_id)[0]
    # The user edits a file the agent wrote: a rewind must not lose it.
    (tmp_path / "notes.txt").write_text("mine")

    click(kernel, model_id, type="rewind", run=state(kernel, model_id)["run_id"], step=first)
    notice = state(kernel, model_id)["notice"]["text"]  # the kernel has handled the click
    assert (tmp_path / "out.csv").read_text() == "A"
    assert not (tmp_path / "new.txt").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert "files put back: out.csv" in notice and "files removed: new.txt" in notice, notice
    assert "notes.txt: changed since the agent wrote it (left as it is)" in notice, notice


def test_a_rewind_follows_the_users_file_settings(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    """A file the user has since listed in ``files_ignore`` is theirs; ``files = False`` touches none."""
    kernel = kernel_factory()
    scripted.set_script(
        [
            call(write("out.csv", "A")),
            call(write("out.csv", "B") + "\n" + write("new.txt", "later")),
            {"content": "Written."},
        ]
    )
    run = kernel.run(CELL, cell_id=CELL_ID)
    assert "Written." in run.text, run.text
    model_id = widget_id(run)
    first, last = results(kernel, model_id)
    run_id = state(kernel, model_id)["run_id"]

    kernel.run("%config AgentMagics.files_ignore = ['*.csv']")
    click(kernel, model_id, type="rewind", run=run_id, step=first)
    notice = state(kernel, model_id)["notice"]["text"]
    assert (tmp_path / "out.csv").read_text() == "B", notice
    assert not (tmp_path / "new.txt").exists(), notice
    assert "out.csv: in files_ignore (left as it is)" in notice, notice

    kernel.run("%config AgentMagics.files = False")
    click(kernel, model_id, type="rewind", run=run_id, step=last)
    notice = state(kernel, model_id)["notice"]["text"]
    assert not (tmp_path / "new.txt").exists(), notice
    assert "files" not in notice, notice


def test_a_fork_does_not_see_the_other_branchs_files(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    kernel = kernel_factory()
    scripted.set_script([call("x = 1"), call(write("out.csv", "A")), {"content": "Branch A."}])
    run = kernel.run(CELL, cell_id=CELL_ID)
    assert "Branch A." in run.text, run.text
    assert (tmp_path / "out.csv").read_text() == "A"
    model_id = widget_id(run)
    original = state(kernel, model_id)["run_id"]
    before_a, after_a = results(kernel, model_id)

    # The script answers by turn: a fork after n replies is given entry n first.
    # Forked from before branch A wrote out.csv, and writing nothing: there is no out.csv.
    scripted.set_script([{}, {"content": "Branch B."}])
    click(kernel, model_id, type="fork", run=original, step=before_a, instruction="Set y.")
    settle(kernel)
    assert state(kernel, model_id)["run_id"] != original
    assert not (tmp_path / "out.csv").exists()
    assert "out.csv" not in recorded(tmp_path / "store" / "agents.duckdb")

    # Forked from after it: branch A's out.csv is back, and what the fork writes is its own.
    scripted.set_script([{}, {}, call(write("out.csv", "C")), {"content": "Branch C."}])
    click(kernel, model_id, type="fork", run=original, step=after_a, instruction="Write C.")
    settle(kernel)
    assert (tmp_path / "out.csv").read_text() == "C"
    assert recorded(tmp_path / "store" / "agents.duckdb")["out.csv"]["size"] == 1
    scripted.set_script([{}, {}, {"content": "Branch A again."}])
    click(kernel, model_id, type="fork", run=original, step=after_a, instruction="Stop.")
    settle(kernel)
    assert (tmp_path / "out.csv").read_text() == "A"


def test_files_over_the_cap_are_listed_and_ignored_folders_are_not_recorded(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer, tmp_path: Path
) -> None:
    kernel = kernel_factory()
    kernel.run("%config AgentMagics.files_cap = 10\n%config AgentMagics.files_ignore = ['*.log']")
    code = "\n".join(
        [
            "import os",
            "for d in ('.git', '__pycache__', 'node_modules', 'venv', '.ipynb_checkpoints'):",
            "    os.makedirs(d, exist_ok=True); open(d + '/x.txt', 'w').write('x')",
            write("venv/pyvenv.cfg", "home = /usr"),
            write("run.log", "a log"),
            write("small.txt", "12345"),
            write("big.bin", "x" * 100),
        ]
    )
    scripted.set_script([call(code), {"content": "Written."}])
    run = kernel.run(CELL, cell_id=CELL_ID)
    assert "files not versioned: big.bin (over the run's cap of 10 bytes" in run.text, run.text
    files = recorded(tmp_path / "store" / "agents.duckdb")
    assert sorted(files) == ["big.bin", "small.txt"], files
    assert files["big.bin"]["size"] == 100 and "cap" in files["big.bin"]["unversioned"]
    assert files["small.txt"]["size"] == 5 and len(files["small.txt"]["sha256"]) == 64


def test_replay_reports_a_file_written_with_other_content(
    kernel_factory: Callable[..., Kernel], scripted: ScriptedServer
) -> None:
    kernel = kernel_factory()
    kernel.run("CONTENT = 'A'")
    scripted.set_script([call("open('out.csv', 'w').write(CONTENT)\nNone"), {"content": "Done."}])
    run = kernel.run(CELL, cell_id=CELL_ID)
    assert "Done." in run.text, run.text
    same = kernel.run("%agent replay files")
    assert "the same" in same.text, same.text
    kernel.run("CONTENT = 'B'")  # the same output, another file
    differs = kernel.run("%agent replay files")
    assert "the files differ\n" in differs.text, differs.text
    assert "recorded: out.csv: sha256" in differs.text, differs.text
    assert differs.text.count("out.csv: sha256") == 2, differs.text


def test_diff_of_two_points_names_added_removed_and_changed_files() -> None:
    a = {"same.csv": {"sha256": "1", "size": 1}, "old.csv": {"sha256": "2", "size": 1}}
    b = {"same.csv": {"sha256": "1", "size": 1}, "new.csv": {"sha256": "3", "size": 1}}
    b["old.csv"] = {"unversioned": "over the run's cap", "size": 9}
    diff = diff_files(a, {k: v for k, v in b.items() if k != "old.csv"})
    assert (diff.added, diff.removed, diff.changed) == (["new.csv"], ["old.csv"], [])
    assert diff_files(a, b).changed == ["old.csv"] and not diff_files(a, a)


def test_a_scan_stops_at_its_limit_and_leaves_a_store_elsewhere_out(tmp_path: Path) -> None:
    for name in "abcde":
        (tmp_path / f"{name}.txt").write_text(name)
    (tmp_path / "agents.duckdb.journal").mkdir()
    (tmp_path / "agents.duckdb.journal" / "run.jsonl").write_text("{}")
    notebook = str(tmp_path / "nb.ipynb")
    folder = Folder.of(notebook, str(tmp_path / "agents.duckdb"), FilePolicy(scan_limit=3))
    watch = Watch(folder, {})
    watch.before()
    (tmp_path / "a.txt").write_text("changed")
    (tmp_path / "e.txt").write_text("past the limit")
    (tmp_path / "b.txt").unlink()
    changes = watch.after()
    assert changes is not None and watch.truncated
    assert list(changes.written) == ["a.txt"] and changes.removed == ["b.txt"]
    # A team store is no file of the folder: only the notebook is left out.
    team = Folder.of(notebook, "postgresql://u@h/db", FilePolicy())
    assert sorted(team.scan()[0]) == [
        "a.txt",
        "agents.duckdb.journal/run.jsonl",
        "c.txt",
        "d.txt",
        "e.txt",
    ]


def test_a_version_counts_once_towards_the_cap(tmp_path: Path) -> None:
    folder = Folder.of(str(tmp_path / "nb.ipynb"), "", FilePolicy(cap=10))
    watch, prepared = Watch(folder, {}), []

    def call(files: dict[str, str]):
        watch.before()
        for name, text in files.items():
            (tmp_path / name).write_text(text)
        changes = watch.after()
        assert changes
        return watch.hash(changes, lambda digest, data: prepared.append(data)).result()

    first = call({"a.txt": "123456"})
    again = call({"a.txt": "", "b.txt": "123456"})  # the same content under another name
    assert again.records["b.txt"] == first.records["a.txt"]
    assert list(again.blobs.values()) == [b""]  # only the new version is stored
    assert again.records["a.txt"] == {"sha256": again.records["a.txt"]["sha256"], "size": 0}
    over = call({"c.txt": "abcdefgh"})
    assert over.unversioned == {"c.txt": "over the run's cap of 10 bytes for files"}
    assert over.records["c.txt"]["size"] == 8 and prepared == [b"123456", b""]
