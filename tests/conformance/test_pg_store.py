"""PostgreSQL only: a team's store, where every row has an owner; how commits wait.

A user lists and resumes only their own agents, never unpickles what someone
else wrote, and, with the documented roles and row-level security, cannot
write rows in another member's name.
"""

from __future__ import annotations

import psycopg
import pytest

from jupyter_agent.store import StoreError
from jupyter_agent.store_api import open_store
from jupyter_agent.store_pg import ROW_SECURITY_SQL, PostgresStore, grants_sql

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
    assert alice.delete_runs(["rb"]) == 1  # not alice's: nothing of bob's goes
    assert [r.run_id for r in bob.runs()] == ["rb"]


def test_nothing_written_by_another_owner_is_handed_out(pg_url):
    alice, bob = PostgresStore(pg_url, owner="alice"), PostgresStore(pg_url, owner="bob")
    write(bob, run_row("rb"), range(2), {0: {"hb": b"bob's pickle"}})
    with pytest.raises(StoreError, match=r"written by 'bob', not 'alice'.*--restart to recompute"):
        alice.blobs(["hb"])
    with pytest.raises(StoreError, match="written by 'bob'.*can run code"):
        alice.payloads([("rb", None)])


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
    assert forger.runs() == []  # and she cannot read alice's rows either
    assert [r.run_id for r in alice.runs()] == ["ra"]
    assert alice.blobs(["h"]) == {"h": b"alice's value"}


def test_commits_wait_for_the_disk_only_when_the_url_asks(pg_url):
    fast = PostgresStore(pg_url).writer("r1", secrets=[])
    durable = PostgresStore(pg_url + "?options=-c%20synchronous_commit%3Don").writer(
        "r2", secrets=[]
    )
    try:
        assert fast._con.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        assert durable._con.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    finally:
        fast.close()
        durable.close()


def test_an_unreachable_server_is_one_clear_error():
    store = open_store("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1/none could not be reached.*PGPASSWORD"):
        store.runs()
