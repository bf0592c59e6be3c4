"""PostgreSQL only: a team store under a hostile member, with the documented roles.

Each member logs in as a role of their own (row-level security applied as
docs/store-postgres.md says). A member must not be able to disrupt another's
agents without reading a row: not through the team's metadata, not through
learnt context windows, not through advisory locks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
import pytest

from jupyter_agent.errors import StoreError
from jupyter_agent.store.postgres import admin
from jupyter_agent.store.postgres.store import PostgresStore
from jupyter_agent.store.schema import SCHEMA_VERSION

from .test_store_conformance import NB, cp, run_row, write


def _team(pg_url: str, *names: str) -> Callable[[str], PostgresStore]:
    """The admin's set-up (tables, grants, row security) and a login role per member.

    Roles are cluster-wide, so each test's members get names of their own.
    """
    PostgresStore(pg_url, owner="admin").flush()  # the admin creates the tables
    tag = uuid.uuid4().hex[:6]
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(admin.grants_sql("team"))
        con.execute(admin.ROW_SECURITY_SQL)
        for name in names:
            con.execute(f"CREATE ROLE {name}_{tag} LOGIN IN ROLE team")

    def member(name: str) -> PostgresStore:
        role = f"{name}_{tag}"
        return PostgresStore(pg_url.replace("postgres@", f"{role}@", 1), owner=role)

    return member


def test_a_member_cannot_change_team_meta_nor_another_members_window(pg_url):
    member = _team(pg_url, "alice", "bob")
    alice, bob = member("alice"), member("bob")
    write(alice, run_row("ra"), [0])
    alice.remember_window("m", 8000)
    bob.remember_window("m", 60)  # his endpoint, or his lie: his window only
    assert alice.learnt_window("m") == 8000 and bob.learnt_window("m") == 60
    with psycopg.connect(bob.url, autocommit=True) as con:
        for sql in (
            f"UPDATE {admin.SCHEMA}.meta SET value = '99' WHERE key = 'schema_version'",
            f"DELETE FROM {admin.SCHEMA}.meta",
            f"INSERT INTO {admin.SCHEMA}.meta VALUES ('context_window:m', '60')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(sql)
    admin._ready.clear()  # as a new process would check the schema anew
    assert alice.info().schema_version == SCHEMA_VERSION
    assert [r.run_id for r in alice.runs()] == ["ra"]
    assert alice.learnt_window("m") == 8000


def test_a_schema_2_team_store_is_upgraded_by_the_admin_and_members_keep_working(pg_url):
    tag = uuid.uuid4().hex[:6]
    alice_role, bob_role = f"alice_{tag}", f"bob_{tag}"
    with psycopg.connect(pg_url, autocommit=True) as con:  # as schema 2 was set up
        con.execute(admin._DDL)
        con.execute(f"INSERT INTO {admin.SCHEMA}.meta VALUES ('schema_version', '2')")
        con.execute(f"INSERT INTO {admin.SCHEMA}.meta VALUES ('context_window:m', '60')")
        con.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'team') THEN "
            "CREATE ROLE team NOLOGIN; END IF; END $$;"
        )
        con.execute(f"GRANT USAGE ON SCHEMA {admin.SCHEMA} TO team")
        con.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {admin.SCHEMA} TO team"
        )
        for t in ("runs", "checkpoints", "blobs", "notebook_moves"):
            con.execute(
                f"ALTER TABLE {admin.SCHEMA}.{t} ENABLE ROW LEVEL SECURITY; CREATE POLICY "
                f"own_rows ON {admin.SCHEMA}.{t} USING (owner = current_user) "
                "WITH CHECK (owner = current_user)"
            )
        for role in (alice_role, bob_role):
            con.execute(f"CREATE ROLE {role} LOGIN IN ROLE team")
    admin._ready.clear()
    assert PostgresStore(pg_url, owner="admin").info().schema_version == SCHEMA_VERSION
    alice, bob = (
        PostgresStore(pg_url.replace("postgres@", f"{r}@", 1), owner=r)
        for r in (alice_role, bob_role)
    )
    assert alice.learnt_window("m") is None  # the team-wide window anyone could set is gone
    alice.remember_window("m", 8000)
    bob.remember_window("m", 60)
    assert alice.learnt_window("m") == 8000 and bob.learnt_window("m") == 60
    with psycopg.connect(bob.url, autocommit=True) as con:
        assert con.execute(f"SELECT owner FROM {admin.SCHEMA}.learnt_windows").fetchall() == [
            (bob_role,)
        ]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            con.execute(f"UPDATE {admin.SCHEMA}.meta SET value = '99'")
    write(alice, run_row("ra"), [0])
    assert [r.run_id for r in alice.runs()] == ["ra"]


def _advisory_keys(con: psycopg.Connection) -> list[int]:
    """Every advisory key held in the database, as ``pg_locks`` shows it to any member."""
    return [
        k
        for (k,) in con.execute(
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
            "WHERE locktype = 'advisory'"
        ).fetchall()
    ]


def test_a_member_can_neither_take_nor_fake_another_members_locks(pg_url):
    """Bob watches alice's keys while she runs, guesses the rest, holds them all and writes
    what he can: her agent is not shown live, her run proceeds, her delete works."""
    member = _team(pg_url, "alice", "bob")
    alice, bob = member("alice"), member("bob")
    write(alice, run_row("ra"), [0])
    fake = "jupyter-agent locks pid 4242 on alices-laptop"
    with psycopg.connect(bob.url, autocommit=True, application_name=fake) as con:
        with alice.agent_lock(NB, "a"):
            running = alice.writer("ra", secrets=[])
            seen = _advisory_keys(con)
            running.close()
        assert len(seen) >= 2  # her agent's key and her run's, while she ran them
        me = alice.owner
        seen += [admin.lock_key("run", *p) for p in (["ra"], [me, "ra"], [me, me, "ra"])]
        seen += [admin.lock_key("agent", *p) for p in ([me, NB, "a"], [me, me, NB, "a"])]
        for key in seen:
            con.execute("SELECT pg_advisory_lock(%s)", [key])
        impostor = PostgresStore(bob.url, owner=me)  # JUPYTERHUB_USER is bob's to set
        with pytest.raises(StoreError), impostor.agent_lock(NB, "a"):
            pass
        for sql in (f"UPDATE {admin.SCHEMA}.runs SET lock_key = 1",) + tuple(
            f"UPDATE {admin.SCHEMA}.{t} SET owner = current_user"
            for t in ("runs", "checkpoints", "agent_locks")
        ):
            assert con.execute(sql).rowcount == 0  # her rows are not his to change
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            con.execute(f"INSERT INTO {admin.SCHEMA}.agent_locks VALUES (%s, %s, 'a', 1)", [me, NB])
        with bob.agent_lock(NB, "a"):  # his own agent of that name
            assert alice.live_runs() == set()  # her finished run does not look live
            with alice.agent_lock(NB, "a"):  # nor her agent taken
                his = bob.writer("ra", secrets=[])  # his own run of that id, at once
                resumed = alice.writer("ra", secrets=[])
                try:
                    his.put_run(run_row("ra"))
                    resumed.put_checkpoint(cp("ra", 1), b"payload ra/1")
                    assert alice.live_runs() == {"ra"} == bob.live_runs()
                finally:
                    resumed.close()
                    his.close()
            assert alice.live_runs() == set()
            assert [c.step for c in alice.checkpoints("ra")] == [0, 1]
            assert alice.delete_agent(NB, "a") == ["ra"]  # the REST delete, lock and all
    assert alice.runs() == []


def test_delete_runs_counts_only_what_row_security_let_it_delete(pg_url):
    member = _team(pg_url, "alice", "bob")
    alice, bob = member("alice"), member("bob")
    write(alice, run_row("ra"), [0, 1])
    write(bob, run_row("rb"), [0])
    assert bob.delete_runs(["ra"]) == 0  # hers: nothing of it goes, and he is told so
    assert bob.delete_runs(["rb", "never-was"]) == 1
    assert [r.run_id for r in alice.runs()] == ["ra"] and len(alice.checkpoints("ra")) == 2


def test_a_hub_user_who_is_not_the_database_role_is_told_why_nothing_shows(pg_url, monkeypatch):
    member = _team(pg_url, "alice")
    alice = member("alice")
    write(alice, run_row("ra"), [0])
    monkeypatch.setenv("JUPYTERHUB_USER", "Alice.Smith")  # the hub's name, not the role's
    mismatched = PostgresStore(alice.url)
    with pytest.raises(StoreError, match=rf"role '{alice.owner}'.*'Alice\.Smith'"):
        mismatched.runs()
    assert [r.run_id for r in alice.runs()] == ["ra"]  # the right name still reads


def test_a_run_id_is_not_enough_to_take_a_members_run(pg_url):
    """Run ids travel in URLs, logs and exports: knowing one must not let bob block the run."""
    member = _team(pg_url, "alice", "bob")
    alice, bob = member("alice"), member("bob")
    write(alice, run_row("ra"), [0])
    me = alice.owner
    guesses = [admin.lock_key("run", *parts) for parts in (["ra"], [me, "ra"], [me, me, "ra"])]
    with psycopg.connect(bob.url, autocommit=True) as con:
        for key in guesses:
            con.execute("SELECT pg_advisory_lock(%s)", [key])
        resumed = alice.writer("ra", secrets=[])  # her resume is not "written elsewhere"
        try:
            assert alice.live_runs() == {"ra"}
        finally:
            resumed.close()
    assert alice.live_runs() == set()


def test_a_run_id_is_not_enough_to_fill_a_members_future_steps(pg_url):
    """Bob, knowing alice's run id, writes his own rows at her next step numbers: his rows are
    his run's, and every step of hers is saved."""
    member = _team(pg_url, "alice", "bob")
    alice, bob = member("alice"), member("bob")
    mine = alice.writer("ra", secrets=[])
    mine.put_run(run_row("ra"))
    for step in range(3):
        mine.put_checkpoint(cp("ra", step), f"payload ra/{step}".encode())
    write(bob, run_row("ra"), range(3, 12))  # through the API, in his own name
    with psycopg.connect(bob.url, autocommit=True) as con:  # and in raw SQL
        con.execute(
            f"INSERT INTO {admin.SCHEMA}.checkpoints (run_id, step, owner, kind, status, "
            "summary, created_at, duration_ms, tokens, size) "
            "VALUES ('ra', 12, current_user, 'model', 'done', 'bob', 0, 0, 0, 0)"
        )
    try:
        for step in range(3, 14):
            mine.put_checkpoint(cp("ra", step), f"payload ra/{step}".encode())
    finally:
        mine.close()
    assert [c.step for c in alice.checkpoints("ra")] == list(range(14))
    loaded = alice.payloads([("ra", None)])
    assert [p for _, p in loaded] == [f"payload ra/{s}".encode() for s in range(14)]
    assert [c.step for c in bob.checkpoints("ra")] == list(range(3, 13))  # his run of that id
    assert alice.delete_runs(["ra"]) == 1 and [c.step for c in bob.checkpoints("ra")]


def test_an_agent_saves_every_step_though_another_member_wrote_at_its_next_steps(
    pg_url, kernel_factory, scripted, tmp_path
):
    """A real agent of alice's in a kernel; bob, knowing her run id, fills her next step
    numbers with rows in his name while she waits. Her run still saves every step."""
    from ..test_cli import AGENT
    from ..test_durable_kernel import tool

    member = _team(pg_url, "alice", "bob")
    alice, bob = member("alice"), member("bob")
    release = tmp_path / "release"
    wait = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.1)"
    scripted.set_script([tool(wait), tool("x = 1"), tool("y = x + 1"), {"content": "Done."}])
    kernel = kernel_factory(JUPYTER_AGENT_STORE=alice.url, JUPYTERHUB_USER=alice.owner)
    running = kernel.start(AGENT)
    kernel.wait_for(running, "time.sleep(0.1)")
    with psycopg.connect(pg_url, autocommit=True) as con:  # her run id, as a URL shows it
        ((run_id, last),) = con.execute(
            f"SELECT run_id, max(step) FROM {admin.SCHEMA}.checkpoints GROUP BY run_id"
        ).fetchall()
    with psycopg.connect(bob.url, autocommit=True) as con:
        for step in range(last + 1, last + 40):
            con.execute(
                f"INSERT INTO {admin.SCHEMA}.checkpoints (run_id, step, owner, kind, status, "
                "summary, created_at, duration_ms, tokens, size) "
                "VALUES (%s, %s, current_user, 'model', 'done', 'bob', 0, 0, 0, 0)",
                [run_id, step],
            )
    release.touch()
    done = kernel.wait(running)
    assert done.status == "ok" and "Done." in done.text, done.text
    steps = alice.checkpoints(run_id)
    assert [c.step for c in steps] == list(range(len(steps))) and len(steps) > last + 4
    assert steps[-1].status == "done" and "bob" not in {c.summary for c in steps}
    assert len(bob.checkpoints(run_id)) == 39


def test_a_conflicting_row_of_the_writers_own_is_an_error_and_the_same_row_again_is_not(pg_url):
    member = _team(pg_url, "alice")
    alice = member("alice")
    write(alice, run_row("ra"), range(3))
    again = alice.writer("ra", secrets=[])
    try:
        again.put_run(run_row("ra"))  # the same rows once more, as a replay writes them
        again.put_checkpoint(cp("ra", 2), b"payload ra/2")
        with pytest.raises(StoreError, match=r"checkpoint 2 of run ra: it is already stored"):
            again.put_checkpoint(cp("ra", 2, status="done"), b"another payload")
        with pytest.raises(StoreError, match=r"run ra: it is already stored"):
            again.put_run(run_row("ra", created=5.0))
        again.put_checkpoint(cp("ra", 3), b"payload ra/3")  # the run goes on from there
    finally:
        again.close()
    assert [(c.step, c.status) for c in alice.checkpoints("ra")] == [
        (s, "running") for s in range(4)
    ]
    assert alice.payloads([("ra", 2)])[-1][1] == b"payload ra/2"


def test_a_schema_3_team_store_is_upgraded_by_the_admin_and_members_keep_working(pg_url):
    """Keys with the owner, and agents' lock keys in rows of their own, under the grants and
    row security the admin had given schema 3."""
    v3 = admin._DDL.replace("PRIMARY KEY (run_id, owner)", "PRIMARY KEY (run_id)").replace(
        "PRIMARY KEY (run_id, step, owner)", "PRIMARY KEY (run_id, step)"
    )
    assert v3.count("PRIMARY KEY (run_id") == 2 and "owner)" not in v3.split("blobs")[0]
    tag = uuid.uuid4().hex[:6]
    roles = {name: f"{name}_{tag}" for name in ("alice", "bob")}
    with psycopg.connect(pg_url, autocommit=True) as con:  # as schema 3 was set up
        con.execute(v3 + admin._WINDOWS_DDL + admin._META_READ_ONLY)
        con.execute(f"INSERT INTO {admin.SCHEMA}.meta VALUES ('schema_version', '3')")
        con.execute(admin.grants_sql("team"))
        for t in admin.MEMBER_TABLES[:-1]:
            con.execute(admin.own_rows_sql(t))
        for role in roles.values():
            con.execute(f"CREATE ROLE {role} LOGIN IN ROLE team")
    admin._ready.clear()
    assert PostgresStore(pg_url, owner="admin").info().schema_version == SCHEMA_VERSION == 4
    with psycopg.connect(pg_url, autocommit=True) as con:
        keys = dict(
            con.execute(
                "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE contype = 'p' AND connamespace = %s::regnamespace",
                [admin.SCHEMA],
            ).fetchall()
        )
    assert keys[f"{admin.SCHEMA}.runs"] == "PRIMARY KEY (run_id, owner)"
    assert keys[f"{admin.SCHEMA}.checkpoints"] == "PRIMARY KEY (run_id, step, owner)"
    alice, bob = (
        PostgresStore(pg_url.replace("postgres@", f"{r}@", 1), owner=r) for r in roles.values()
    )
    write(bob, run_row("ra"), range(2))  # her run id, in his name
    with alice.agent_lock(NB, "a"), bob.agent_lock(NB, "a"):
        write(alice, run_row("ra"), range(3))
    assert [c.step for c in alice.checkpoints("ra")] == [0, 1, 2]
    assert [c.step for c in bob.checkpoints("ra")] == [0, 1]
    with psycopg.connect(bob.url, autocommit=True) as con:
        assert con.execute(f"SELECT owner FROM {admin.SCHEMA}.agent_locks").fetchall() == [
            (bob.owner,)
        ]


def test_members_read_the_store_id_the_admin_made_and_cannot_change_it(pg_url):
    member = _team(pg_url, "carol")
    carol = member("carol")
    made = PostgresStore(pg_url, owner="admin").store_id()
    assert made and carol.store_id() == made
    with (
        psycopg.connect(carol.url, autocommit=True) as con,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        con.execute(f"UPDATE {admin.SCHEMA}.meta SET value = 'x' WHERE key = 'store_id'")
    # A team store made before store ids gets one from the admin's grants.
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(f"DELETE FROM {admin.SCHEMA}.meta WHERE key = 'store_id'")
        assert carol.store_id() is None
        con.execute(admin.grants_sql("team"))
    assert carol.store_id() not in (None, made)
