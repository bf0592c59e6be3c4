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

from jupyter_agent.errors import AgentBusy, StoreError
from jupyter_agent.store.postgres import admin
from jupyter_agent.store.postgres.store import PostgresStore
from jupyter_agent.store.schema import SCHEMA_VERSION

from .test_store_conformance import NB, run_row, write


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


def test_a_member_can_neither_take_nor_fake_another_members_locks(pg_url):
    member = _team(pg_url, "alice", "bob")
    alice, bob = member("alice"), member("bob")
    write(alice, run_row("ra"), [0])
    impostor = PostgresStore(bob.url, owner=alice.owner)  # JUPYTERHUB_USER is bob's to set
    with (
        impostor.agent_lock(NB, "a"),
        alice.agent_lock(NB, "a"),
        psycopg.connect(bob.url, autocommit=True) as con,  # what pg_locks shows bob
    ):
        seen = [
            k
            for (k,) in con.execute(
                "SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks l "
                "JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' "
                "AND a.usename = %s",
                [alice.owner],
            ).fetchall()
        ]
    assert seen  # her agent's key, while she ran it
    with psycopg.connect(pg_url, autocommit=True) as con:  # her run's key, however learnt
        seen += [k for (k,) in con.execute(f"SELECT lock_key FROM {admin.SCHEMA}.runs")]
    named = [admin.lock_key("run", "ra"), admin.lock_key("agent", alice.owner, NB, "a")]
    fake = "jupyter-agent locks pid 4242 on alices-laptop"
    with psycopg.connect(bob.url, autocommit=True, application_name=fake) as con:
        for key in [*seen, *named]:
            con.execute("SELECT pg_advisory_lock(%s)", [key])
        assert alice.live_runs() == set()  # her finished run does not look live
        # A key bob saw in use he can hold, but he is named for what he is, not what he says.
        with pytest.raises(AgentBusy) as busy, alice.agent_lock(NB, "a"):
            pass
        assert "alices-laptop" not in str(busy.value) and bob.owner in str(busy.value)
        assert alice.delete_runs(["ra"]) == 1
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
