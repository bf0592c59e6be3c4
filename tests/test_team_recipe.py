"""docs/team.md, tried as written: the team's PostgreSQL set-up and the JupyterHub recipe.

The code blocks are parsed out of the doc and run (host, port and paths replaced,
each replacement checked to apply), so the doc and this test cannot drift apart:

* the superuser's SQL, the admin's set-up as a role with CREATEROLE (no superuser)
  and the adding of members, on a real PostgreSQL whose ``pg_hba.conf`` holds the
  doc's lines: members log in over TCP with scram-sha-256 and see only their rows;
* a real JupyterHub (root only: it creates two local Unix users) with the doc's
  ``jupyterhub_config.py`` lines: each user's server answers from its own role, and
  stopping the hub stops the servers, leaving an agent that was running in a kernel
  interrupted (resumable) in the store. Deselect it with ``-m "not jupyterhub"``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .pg import PgServer, _free_port, ensure_binaries

psycopg = pytest.importorskip("psycopg", reason="pip install 'jupyter-agent[postgres]'")

from jupyter_agent.errors import StoreError  # noqa: E402
from jupyter_agent.store.postgres import admin  # noqa: E402
from jupyter_agent.store.postgres.store import PostgresStore  # noqa: E402
from jupyter_agent.store.postgres.team import add_member, setup_team, write_pgpass  # noqa: E402
from jupyter_agent.testing import ScriptedServer  # noqa: E402
from jupyter_agent.views.listing import Reader  # noqa: E402

from .conformance.test_store_conformance import run_row, write  # noqa: E402
from .conftest import API_KEY  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "team.md"
DOC_HOST = "db.example.org"
DOC_NETWORK = "10.0.0.0/8"
DATABASE = "team_agents"


def doc_blocks(lang: str) -> list[str]:
    """The doc's fenced code blocks in ``lang``, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", DOC.read_text(), re.M | re.S)


def edited(text: str, *pairs: tuple[str, str]) -> str:
    """``text`` with each (old, new) replaced; a missing ``old`` means the doc changed."""
    for old, new in pairs:
        assert old in text, f"docs/team.md no longer contains {old!r}: update this test"
        text = text.replace(old, new)
    return text


def run_python_block(index: int, *pairs: tuple[str, str]) -> dict[str, Any]:
    """Run the doc's ``index``th python block with ``pairs`` replaced; its globals."""
    scope: dict[str, Any] = {"__name__": "team_recipe"}
    exec(compile(edited(doc_blocks("python")[index], *pairs), str(DOC), "exec"), scope)
    return scope


class Team:
    """The doc's database on a server of its own, whose pg_hba.conf is the doc's."""

    def __init__(self, server: PgServer, home: Path) -> None:
        self.server = server
        self.home = home
        self.where = f"127.0.0.1:{server.port}"

    def url(self, role: str, passfile: Path | None = None) -> str:
        url = f"postgresql://{role}@{self.where}/{DATABASE}"
        return f"{url}?passfile={passfile}" if passfile else url

    def host(self) -> tuple[str, str]:
        return (f"{DOC_HOST}/", f"{self.where}/")

    def add_member(self, name: str, pgpass: Path | None = None) -> None:
        """The doc's "adding a member" block for ``name``; into ``pgpass`` (else their home)."""
        pairs = [self.host(), ('member = "alice"', f"member = {name!r}")]
        if pgpass is not None:  # no Unix user of that name: a file of the test's
            pairs += [
                ('os.path.expanduser(f"~{member}/.pgpass")', repr(str(pgpass))),
                ("owner=member", "owner=None"),
            ]
        run_python_block(1, *pairs)

    def member(self, name: str, pgpass: Path) -> PostgresStore:
        """The store as ``name``'s server opens it (its owner is its JupyterHub user)."""
        return PostgresStore(self.url(name, pgpass), owner=name, busy_timeout=5)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    """A PostgreSQL server with the doc's pg_hba lines and the superuser's SQL run."""
    bindir = ensure_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed: sudo apt-get install postgresql")
    (hba,) = doc_blocks("text")
    hba = edited(hba, (DOC_NETWORK, "127.0.0.1/32"))
    # The fixture's own superuser connections stay trusted; every other role needs a password.
    server = PgServer(
        bindir,
        hba="local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n"
        + hba
        + "host all all 127.0.0.1/32 scram-sha-256\n",
    ).start()
    home = tmp_path_factory.mktemp("team")
    try:
        (superuser_sql,) = doc_blocks("sql")
        with psycopg.connect(server.url(), autocommit=True) as con:
            for statement in filter(None, (s.strip() for s in superuser_sql.split(";"))):
                con.execute(statement)
        found = re.search(r"PASSWORD '([^']+)'", superuser_sql)
        assert found, "the superuser's SQL gives the admin a password"
        admin_pgpass = home / "admin.pgpass"
        admin_pgpass.write_text(f"127.0.0.1:{server.port}:{DATABASE}:agents_admin:{found[1]}\n")
        admin_pgpass.chmod(0o600)
        old = os.environ.get("PGPASSFILE")
        os.environ["PGPASSFILE"] = str(admin_pgpass)  # the admin's ~/.pgpass
        try:
            team = Team(server, home)
            run_python_block(0, team.host())  # the admin's one-time set-up
            yield team
        finally:
            if old is None:
                os.environ.pop("PGPASSFILE", None)
            else:
                os.environ["PGPASSFILE"] = old
    finally:
        admin._ready.clear()
        server.stop()


def test_members_log_in_with_their_passwords_and_see_only_their_agents(team: Team):
    files = {name: team.home / f"{name}.pgpass" for name in ("alice", "bob")}
    for name, pgpass in files.items():
        team.add_member(name, pgpass)
        assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600  # else libpq ignores it
    alice, bob = (team.member(name, pgpass) for name, pgpass in files.items())
    write(alice, run_row("ra", "analyst"), [0, 1])
    write(bob, run_row("rb", "loader"), [0])
    assert [r.run_id for r in alice.runs()] == ["ra"]
    assert [r.run_id for r in bob.runs()] == ["rb"]
    with psycopg.connect(team.url("bob", files["bob"]), autocommit=True) as con:
        assert con.execute("SELECT run_id FROM jupyter_agent.runs").fetchall() == [("rb",)]
    with psycopg.connect(team.server.url(DATABASE), autocommit=True) as con:
        verifiers = con.execute(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('alice', 'bob')"
        ).fetchall()
        assert len(verifiers) == 2 and all(v.startswith("SCRAM-SHA-256$") for _, v in verifiers)
        assert con.execute(  # the admin is no superuser, only CREATEROLE
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = 'agents_admin'"
        ).fetchone() == (False, True)

    # Adding a member again gives a new password: the old one no longer logs in.
    stale = team.home / "alice-old.pgpass"
    shutil.copy(files["alice"], stale)
    team.add_member("alice", files["alice"])
    assert [r.run_id for r in team.member("alice", files["alice"]).runs()] == ["ra"]
    with pytest.raises(StoreError, match="password authentication failed"):
        team.member("alice", stale).runs()


def test_a_member_without_a_password_cannot_log_in(team: Team):
    with psycopg.connect(team.url("agents_admin"), autocommit=True) as con:
        con.execute("CREATE ROLE carol LOGIN IN ROLE team")  # the old, password-less way
    empty = team.home / "none.pgpass"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(StoreError, match="no password supplied"):
        team.member("carol", empty).runs()
    guessed = team.home / "carol.pgpass"
    guessed.write_text(f"*:*:*:carol:{secrets.token_hex(8)}\n")
    guessed.chmod(0o600)
    with pytest.raises(StoreError, match="password authentication failed"):
        team.member("carol", guessed).runs()
    with psycopg.connect(team.url("agents_admin"), autocommit=True) as con:
        con.execute("DROP ROLE carol")  # removing a member, as docs/team.md says


def test_a_plain_database_owner_is_told_the_admin_needs_createrole(team: Team):
    with psycopg.connect(team.server.url(), autocommit=True) as con:
        con.execute("CREATE ROLE plain_owner LOGIN PASSWORD 'plain'")
        con.execute("CREATE DATABASE plain_db OWNER plain_owner")
    url = f"postgresql://plain_owner:plain@{team.where}/plain_db"
    with (  # the set-up docs/store-postgres.md used to give, as the database's owner
        psycopg.connect(url, autocommit=True) as con,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="create role"),
    ):
        con.execute("CREATE ROLE dave LOGIN IN ROLE team")

    with pytest.raises(StoreError, match="needs CREATEROLE") as refused:
        setup_team(url)
    assert "\n" not in str(refused.value) and ":plain@" not in str(refused.value)
    with psycopg.connect(url, autocommit=True) as con:
        with pytest.raises(StoreError, match="cannot add the member 'dave'.*needs CREATEROLE"):
            add_member(con, "dave")
        assert con.execute("SELECT 1 FROM pg_roles WHERE rolname = 'dave'").fetchone() is None


def test_write_pgpass_replaces_the_line_of_its_url_and_keeps_the_others(tmp_path):
    path = tmp_path / "pgpass"
    path.write_text("other:5432:db:bob:bobs\n")
    write_pgpass(path, "postgresql://ann%40example.org@db:5433/team", "old")
    write_pgpass(path, "postgresql://ann%40example.org@db:5433/team", "pa:ss\\")
    assert path.read_text().splitlines() == [
        "other:5432:db:bob:bobs",
        "db:5433:team:ann@example.org:pa\\:ss\\\\",  # libpq's escapes for ':' and '\\'
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- JupyterHub --------------------------------------------------------------------------


def _world_readable(path: Path) -> bool:
    """Whether a user other than root can reach ``path`` and read below it."""
    for part in (path, *path.parents):
        if not part.stat().st_mode & stat.S_IXOTH:
            return False
    return bool(path.stat().st_mode & stat.S_IROTH)


class SharedPython:
    """A Python with this one's packages that every user can run: the recipe's shared venv.

    This interpreter when every user can read it. Else (a pyenv under the private
    /root, as the prefix or, in a virtualenv, as the base interpreter) each unreadable
    prefix is bind-mounted at a path they can reach, in a mount namespace of the hub's
    own (:attr:`wrap`), so nothing changes outside the test; where that is not allowed,
    a hard-linked copy (slower to remove) is used. A virtualenv on an unreadable base
    is run through a venv of the test's own over the reachable base and the virtualenv's
    packages. The code under test goes first on the path, copied where every user can
    read it.
    """

    def __init__(self, base: Path) -> None:
        self.env: dict[str, str] = {}
        self.wrap: list[str] = []
        self.mounted: list[Path] = []
        self.python = sys.executable
        self._base = base
        self._mounts: list[str] = []
        self._can_mount = (
            subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0
        )
        exe = Path(os.path.realpath(sys.executable)).name
        home = self._reachable(Path(sys.base_prefix), "python")
        if sys.prefix == sys.base_prefix:
            if home != Path(sys.base_prefix):
                self.python = str(home / "bin" / exe)
        else:
            prefix = self._reachable(Path(sys.prefix), "venv-prefix")
            if home == Path(sys.base_prefix):  # its pyvenv.cfg names a base they can read
                self.python = str(prefix / "bin" / Path(sys.executable).name)
            else:
                venv = base / "venv"
                (venv / "bin").mkdir(parents=True)
                (venv / "pyvenv.cfg").write_text(
                    f"home = {home / 'bin'}\ninclude-system-site-packages = false\n"
                )
                (venv / "bin" / exe).symlink_to(home / "bin" / exe)
                for entry in Path(sys.prefix).iterdir():  # its packages, lib/, etc/ and share/
                    if entry.name not in ("bin", "pyvenv.cfg"):
                        (venv / entry.name).symlink_to(prefix / entry.name)
                self.python = str(venv / "bin" / exe)
        if home != Path(sys.base_prefix):
            self.env["LD_LIBRARY_PATH"] = str(home / "lib")  # before a RUNPATH into /root
        if self._mounts:
            count = len(self._mounts)
            binds = " && ".join(f'mount --bind "${i + 1}" "${i + 2}"' for i in range(0, count, 2))
            self.wrap = [
                *("unshare", "--mount", "--propagation", "private", "sh", "-c"),
                f'{binds} && shift {count} && exec "$@"',
                "sh",
                *self._mounts,
            ]
        code = base / "code"
        shutil.copytree(
            REPO / "jupyter_agent",
            code / "jupyter_agent",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        subprocess.run(["chmod", "-R", "a+rX", str(code)], check=True)
        self.env["PYTHONPATH"] = str(code)

    def _reachable(self, prefix: Path, name: str) -> Path:
        """``prefix``, or where every user can reach it: mounted (in :attr:`wrap`) or copied."""
        if _world_readable(prefix):
            return prefix
        shared = self._base / name
        if self._can_mount:
            shared.mkdir()
            self.mounted.append(shared)
            self._mounts += [str(prefix), str(shared)]
        else:
            subprocess.run(["cp", "-al", str(prefix), str(shared)], check=True)
        return shared


def remove(base: Path, python: SharedPython | None) -> None:
    """Remove the test's directory; never through a mount point into the real prefix."""
    for mounted in python.mounted if python is not None else []:
        try:
            assert not os.path.ismount(mounted)
            mounted.rmdir()  # empty outside the hub's namespace, or this fails
        except (OSError, AssertionError):
            return
    subprocess.run(["rm", "-rf", str(base)], check=False)


def _chp() -> str:
    found = shutil.which("configurable-http-proxy")
    if found is None:  # scripts/test installs it when it can
        pytest.skip("configurable-http-proxy is missing: npm install -g configurable-http-proxy")
    return found


@contextlib.contextmanager
def unix_users(count: int) -> Iterator[list[str]]:
    """``count`` new local users with home directories, removed afterwards."""
    names = [f"ja{uuid.uuid4().hex[:8]}" for _ in range(count)]
    try:
        for name in names:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
        yield names
    finally:
        for name in names:
            subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


def processes_of(uid: int) -> set[int]:
    """The PIDs of the processes running as ``uid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    found.add(int(entry.name))
    return found


def _gone(pids: set[int], timeout: float) -> set[int]:
    """The PIDs of ``pids`` still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if Path(f"/proc/{p}").exists()}
        time.sleep(0.1)
    return alive


class Hub:
    """A JupyterHub process and its REST API, as a service with an admin token."""

    def __init__(
        self,
        base: Path,
        python: SharedPython,
        chp: str,
        team: Team,
        users: list[str],
        env: dict[str, str],
    ) -> None:
        """Start the hub on ``users``; ``env`` is added to their servers' environment."""
        self.dir = base / "hub"
        self.dir.mkdir()
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        recipe = edited(
            doc_blocks("python")[2],
            ("/opt/jupyter-agent/bin/python", python.python),
            team.host(),
        )
        lines = [
            f"c.JupyterHub.bind_url = 'http://127.0.0.1:{self.port}'",
            f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{_free_port()}'",
            f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{_free_port()}'",
            f"c.ConfigurableHTTPProxy.command = [{chp!r}]",
            f"c.ConfigurableHTTPProxy.pid_file = {str(self.dir / 'proxy.pid')!r}",
            f"c.JupyterHub.db_url = 'sqlite:///{self.dir / 'hub.sqlite'}'",
            f"c.JupyterHub.cookie_secret_file = {str(self.dir / 'cookie_secret')!r}",
            f"c.Authenticator.allowed_users = {set(users)!r}",
            "c.Spawner.http_timeout = 60",
            "c.Spawner.start_timeout = 60",
            f"c.JupyterHub.services = [{{'name': 'recipe', 'api_token': {self.token!r}}}]",
            "c.JupyterHub.load_roles = [{'name': 'recipe', 'services': ['recipe'], 'scopes': "
            "['admin:users', 'admin:servers', 'tokens', 'access:servers']}]",
            recipe,
            f"c.Spawner.environment.update({ ({**python.env, **env})!r})",
        ]
        config = self.dir / "jupyterhub_config.py"
        config.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "hub.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*python.wrap, sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **{k: v for k, v in os.environ.items() if k != "PGPASSFILE"},  # the admin's
                    "PATH": f"{Path(chp).parent}:{os.environ['PATH']}",
                },
            )

    def api(self, method: str, path: str, **kw: Any) -> Any:
        import requests

        return requests.request(
            method,
            f"http://127.0.0.1:{self.port}/hub/api/{path}",
            headers={"Authorization": f"token {self.token}"},
            timeout=30,
            **kw,
        )

    def user_api(self, user: str, token: str, path: str, method: str = "GET", **kw: Any) -> Any:
        """A request to ``user``'s server (``path`` under ``/user/NAME/``) with their token."""
        import requests

        return requests.request(
            method,
            f"http://127.0.0.1:{self.port}/user/{user}/{path}",
            headers={"Authorization": f"token {token}"},
            timeout=30,
            **kw,
        )

    def wait(self, condition: Any, what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the hub exited: {self.tail()}"
            with contextlib.suppress(Exception):
                found = condition()
                if found:
                    return found
            time.sleep(0.3)
        pytest.fail(f"{what} within {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join([x for x in lines if " 200 GET " not in x][-40:])  # not the polls

    def stop(self) -> None:
        """Stop the hub as an admin would (SIGTERM); the proxy too, should the hub have left it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.dir / "proxy.pid").read_text())
            if b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)


def tool(code: str) -> dict[str, Any]:
    return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}


def start_kernel(hub: Hub, user: str, token: str) -> Any:
    """A kernel started by ``user``'s server (as that user), with the extension loaded.

    Driven over ZeroMQ with its connection file, which root may read in the user's home.
    """
    from jupyter_client import BlockingKernelClient

    made = hub.user_api(user, token, "api/kernels", "POST", json={"name": "python3"})
    assert made.status_code == 201, made.text
    kernel_id = made.json()["id"]
    name = f"kernel-{kernel_id}.json"
    home = Path(os.path.expanduser(f"~{user}"))
    found = hub.wait(lambda: next(home.rglob(name), None), "the kernel's connection file")
    client = BlockingKernelClient()
    client.load_connection_file(str(found))
    client.start_channels(hb=False)  # a heartbeat not seen yet would count as a dead kernel
    client.wait_for_ready(timeout=60)
    reply = client.execute_interactive("%load_ext jupyter_agent", timeout=60, output_hook=print)
    assert reply["content"]["status"] == "ok", reply
    return client


@pytest.mark.jupyterhub
def test_jupyterhub_gives_each_users_server_its_own_store_and_stops_them_with_it(team: Team):
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root (useradd) to create the hub's local users")
    pytest.importorskip("jupyterhub", reason="pip install jupyterhub (the test extra)")
    chp = _chp()
    base = Path(tempfile.mkdtemp(prefix="jupyter-agent-hub-"))
    base.chmod(0o755)  # the users run the shared Python from here
    hub: Hub | None = None
    python: SharedPython | None = None
    script = [tool("a = 1"), tool("import time; time.sleep(120)"), {"content": "done"}]
    with ScriptedServer(script) as scripted, unix_users(2) as (alice, bob):
        uids = {name: int(subprocess.check_output(["id", "-u", name])) for name in (alice, bob)}
        started: set[int] = set()
        try:
            for name in (alice, bob):
                team.add_member(name)  # the doc's block as written: into ~name/.pgpass
            pgpass = Path(os.path.expanduser(f"~{alice}/.pgpass"))
            assert pgpass.stat().st_uid == uids[alice]
            notebook = os.path.expanduser(f"~{alice}/analysis.ipynb")  # the server's root
            write(team.member(alice, pgpass), run_row("r-hub", "analyst", notebook=notebook), [0])

            python = SharedPython(base)
            endpoint = {"OPENAI_BASE_URL": scripted.url, "OPENAI_API_KEY": API_KEY}
            hub = Hub(base, python, chp, team, [alice, bob], endpoint)
            hub.wait(lambda: hub.api("GET", "").status_code == 200, "the hub answers")
            tokens = {}
            for name in (alice, bob):
                assert hub.api("POST", f"users/{name}").status_code in (201, 409)
                assert hub.api("POST", f"users/{name}/server").status_code in (201, 202)
            for name in (alice, bob):
                hub.wait(
                    lambda name=name: hub.api("GET", f"users/{name}").json()["servers"][""][
                        "ready"
                    ],
                    f"{name}'s server is ready",
                )
                made = hub.api(
                    "POST",
                    f"users/{name}/tokens",
                    json={"scopes": [f"access:servers!user={name}"], "expires_in": 600},
                )
                assert made.status_code == 201, made.text
                tokens[name] = made.json()["token"]
                started |= processes_of(uids[name])

            for name in (alice, bob):
                status = hub.user_api(name, tokens[name], "jupyter-agent/api/status")
                assert status.status_code == 200, status.text
                assert status.json()["store"] == team.url(name)  # the user's own role
                agents = hub.user_api(
                    name, tokens[name], "jupyter-agent/api/agents?notebook=analysis.ipynb"
                )
                assert agents.status_code == 200, agents.text
                listed = [(a["name"], a["run_id"]) for a in agents.json()["agents"]]
                assert listed == ([("analyst", "r-hub")] if name == alice else [])
            # A user's token does not open another user's server.
            assert hub.user_api(alice, tokens[bob], "jupyter-agent/api/status").status_code in (
                302,
                403,
            )

            # An agent runs in alice's kernel, in its second tool call, when the hub stops.
            kernel = start_kernel(hub, alice, tokens[alice])
            kernel.execute("%%agent --name hubagent --model scripted\nBuild a, then wait.")
            hub.wait(lambda: scripted.turns_requested() == [0, 1], "the agent's second step")
            started |= processes_of(uids[alice])  # with the kernel
            time.sleep(1)
            kernel.stop_channels()

            assert started, "the users' servers run as the users"
            hub.stop()  # cleanup_servers = True: the hub stops the servers it started
            assert hub.proc.returncode is not None
            assert _gone(started, 30) == set()
            # ... and the agent paused resumably: interrupted at its last checkpoint.
            store = team.member(alice, pgpass)
            (run,) = [r for r in store.runs() if r.agent == "hubagent"]
            rows, _ = Reader(store).agents_in_order(run.notebook)
            (row,) = [r for r in rows if r["name"] == "hubagent"]
            assert row["status"] == "interrupted", row
            assert row["label"].startswith("interrupted at step"), row
        finally:
            if hub is not None:
                hub.stop()
            for pid in _gone(started, 0):  # only if the hub left them: they are the test's
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            remove(base, python)
