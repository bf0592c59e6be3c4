"""PostgreSQL only: a team's store, where every row has an owner; how commits wait.

A user lists and resumes only their own agents, never unpickles what someone
else wrote, and, with the documented roles and row-level security, cannot
write rows in another member's name.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from jupyter_agent.errors import StoreError
from jupyter_agent.store.open import open_store
from jupyter_agent.store.postgres.admin import ROW_SECURITY_SQL, grants_sql
from jupyter_agent.store.postgres.store import PostgresStore
from jupyter_agent.store.schema import SCHEMA_VERSION

from .test_store_conformance import NB, run_row, write


def test_each_owner_sees_only_their_own_runs(pg_url):
    alice, bob = PostgresStore(pg_url, owner="alice"), PostgresStore(pg_url, owner="bob")
    write(alice, run_row("ra"), range(2), {0: {"shared": b"alice's"}})
    write(bob, run_row("rb"), range(2), {0: {"shared": b"bob's", "hb": b"bob only"}})
    assert [r.run_id for r in alice.runs(notebook=NB, agent="a")] == ["ra"]
    assert alice.run("rb") is None and alice.checkpoints("rb") == []
    assert alice.blobs(["shared"]) == {"shared": b"alice's"}  # same content hash, own copy
    with alice.agent_lock(NB, "a"), bob.agent_lock(NB, "a"):
        pass  # one agent name, two owners: two agents
    assert alice.delete_runs(["rb"]) == 0  # not alice's: nothing of bob's goes
    assert [r.run_id for r in bob.runs()] == ["rb"]


def test_nothing_written_by_another_owner_is_handed_out(pg_url):
    alice, bob = PostgresStore(pg_url, owner="alice"), PostgresStore(pg_url, owner="bob")
    write(bob, run_row("rb"), range(2), {0: {"hb": b"bob's pickle"}})
    with pytest.raises(StoreError, match=r"written by 'bob', not 'alice'.*--restart to recompute"):
        alice.blobs(["hb"])
    with pytest.raises(StoreError, match="written by 'bob'.*can run code"):
        alice.payloads([("rb", None)])


def test_another_owners_rows_of_the_same_run_id_change_nothing_of_mine(pg_url):
    """The owner is part of every key: even without row security, bob's rows at alice's run
    id are his run's, neither a gap nor a refusal in hers."""
    alice, bob = PostgresStore(pg_url, owner="alice"), PostgresStore(pg_url, owner="bob")
    write(alice, run_row("ra"), range(2))
    write(bob, run_row("ra", created=5.0), range(5))
    assert [r.created_at for r in alice.runs()] == [1000.0]
    assert [p for _, p in alice.payloads([("ra", None)])] == [b"payload ra/0", b"payload ra/1"]
    assert [c.step for c in alice.checkpoints("ra")] == [0, 1]
    assert alice.delete_runs(["ra"]) == 1 and len(bob.checkpoints("ra")) == 5


def test_the_owner_is_the_hub_user(pg_url, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "carol")
    store = open_store(pg_url)
    write(store, run_row("rc"), [0])
    assert store.owner == "carol"
    assert PostgresStore(pg_url, owner="dave").runs() == []


def test_row_security_stops_writing_in_another_members_name(pg_url):
    PostgresStore(pg_url, owner="admin").flush()  # the admin creates the tables
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(grants_sql("team"))
        con.execute(ROW_SECURITY_SQL)
        for member in ("alice", "mallory"):
            con.execute(f"CREATE ROLE {member} LOGIN IN ROLE team")
    as_role = {m: pg_url.replace("postgres@", f"{m}@", 1) for m in ("alice", "mallory")}
    alice = PostgresStore(as_role["alice"], owner="alice")
    write(alice, run_row("ra"), [0], {0: {"h": b"alice's value"}})
    assert [r.run_id for r in alice.runs()] == ["ra"]
    # mallory claims to be alice: the database refuses the rows, and nothing lands.
    forger = PostgresStore(as_role["mallory"], owner="alice")
    with pytest.raises(StoreError, match="row-level security"):
        write(forger, run_row("forged"), [0], {0: {"h": b"hostile pickle"}})
    with pytest.raises(StoreError, match="row-level security"):
        forger.runs()  # and she cannot read alice's rows either: she is told why
    assert [r.run_id for r in alice.runs()] == ["ra"]
    assert alice.blobs(["h"]) == {"h": b"alice's value"}


def test_commits_wait_for_the_disk_as_the_durability_or_the_url_says(pg_url):
    sync = PostgresStore(pg_url).writer("r1", secrets=[])  # the default: a machine crash
    process = PostgresStore(pg_url).writer("r2", secrets=[], durability="process")
    url_says = PostgresStore(pg_url + "?options=-c%20synchronous_commit%3Doff").writer(
        "r3", secrets=[]
    )
    try:
        assert sync._con.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert process._con.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        assert url_says._con.execute("SHOW synchronous_commit").fetchone()[0] == "off"
    finally:
        sync.close()
        process.close()
        url_says.close()


def test_an_unreachable_server_is_one_clear_error():
    store = open_store("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1/none could not be reached.*PGPASSWORD"):
        store.runs()


def test_a_schema_1_store_is_upgraded_and_its_dill_payloads_read_as_json(pg_url):
    from jupyter_agent.core.state import decode_delta
    from jupyter_agent.store.postgres import admin as store_pg

    from ..test_migration import v1_payload

    v1_ddl = store_pg._DDL.replace("    payload_format TEXT DEFAULT 'json',\n", "")
    assert v1_ddl != store_pg._DDL
    said = [{"role": "user", "content": "hello from 0.1"}]
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(v1_ddl)
        con.execute(f"INSERT INTO {store_pg.SCHEMA}.meta VALUES ('schema_version', '1')")
        con.execute(
            f"INSERT INTO {store_pg.SCHEMA}.checkpoints (run_id, step, owner, kind, status, "
            "summary, created_at, duration_ms, tokens, size, info, payload) "
            "VALUES ('old', 0, 'alice', 'start', 'running', 's', 1.0, 0, 0, 0, '{}', %s)",
            [v1_payload(messages=said)],
        )
    alice = PostgresStore(pg_url, owner="alice")
    about = alice.info()
    assert (about.schema_version, about.checkpoints) == (SCHEMA_VERSION, 1)
    ((row, payload),) = alice.payloads([("old", None)])
    assert row.kind == "start" and decode_delta(payload).messages == said
    write(alice, run_row("new"), [0])
    with psycopg.connect(pg_url, autocommit=True) as con:
        formats = con.execute(
            f"SELECT run_id, payload_format FROM {store_pg.SCHEMA}.checkpoints ORDER BY run_id"
        ).fetchall()
    assert formats == [("new", "json"), ("old", "dill")]  # converted as its owner reads it


def test_the_location_never_shows_the_password():
    store = PostgresStore("postgresql://alice:s3cret@db.example:5433/team")
    assert store.location == "postgresql://alice@db.example:5433/team"
    assert "s3cret" not in repr(store)


def test_store_info_shows_the_databases_own_sizes(pg_url):
    from ..test_cli import cli

    write(PostgresStore(pg_url, owner="alice"), run_row("ra"), [0, 1], {0: {"h": b"x" * 300_000}})
    env = {"JUPYTER_AGENT_STORE": pg_url, "JUPYTERHUB_USER": "alice"}
    shown = cli("store", "info", env=env)
    assert shown.returncode == 0, shown.stderr
    (size,) = [line for line in shown.stdout.splitlines() if line.startswith("size")]
    assert "PostgreSQL" in size and "DuckDB" not in size, shown.stdout
    info = json.loads(cli("store", "info", "--json", env=env).stdout)
    assert info["sizes"]["postgres"] > 0 and set(info["sizes"]) == {"postgres"}
    assert info["runs"] == 1 and info["checkpoints"] == 2
