"""A team's store on PostgreSQL: the admin's one-time set-up, and adding a member.

The recipe is docs/team.md. Three roles take part: a superuser creates the
team's admin role (``CREATEROLE``: it creates the members' roles) and the
database the admin owns; the admin runs :func:`setup_team` once, then
:func:`add_member` and :func:`write_pgpass` for each member. A member logs in
with a password (``scram-sha-256`` in ``pg_hba.conf``): with ``trust`` anyone
could log in as anyone, and row-level security would protect nothing.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql

from ...errors import StoreError
from .admin import ROW_SECURITY_SQL, connect, display_url, ensure_schema, grants_sql, problem

_ADMIN_NEEDS = (
    "The team's admin role needs CREATEROLE (a superuser runs ALTER ROLE {admin} "
    "CREATEROLE) and must own the database; see docs/team.md."
)


def _can_create_roles(con: psycopg.Connection) -> tuple[str, bool]:
    row = con.execute(
        "SELECT rolname, rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    return (str(row[0]), bool(row[1])) if row else ("?", False)


def setup_team(url: str, team: str = "team") -> None:
    """The admin's one-time set-up of the team database at ``url`` (the admin's URL).

    Creates the tables (the admin owns them), the group role ``team`` its members
    belong to, their grants, and the row-level security that makes each member
    see and write only their own rows. Safe to run again (after an upgrade, too).
    Refused up front, with the fix, when the role may not create roles: the members'
    roles could not be made, and half a set-up helps nobody.
    """
    con = connect(url, "team set-up", 30.0)
    try:
        admin, allowed = _can_create_roles(con)
        if not allowed:
            raise StoreError(
                f"The agent store {display_url(url)} cannot be set up by role {admin!r}: it may "
                "not create roles. " + _ADMIN_NEEDS.format(admin=admin)
            )
        ensure_schema(url, con, create=True)
        try:
            with con.transaction():
                con.execute(grants_sql(team))
                con.execute(ROW_SECURITY_SQL)
        except psycopg.Error as exc:
            raise problem(url, exc, "set up the team's grants and row security") from exc
    finally:
        con.close()


def add_member(
    con: psycopg.Connection, member: str, *, team: str = "team", password: str | None = None
) -> str:
    """Create the login role ``member`` in ``team`` (or give it a new password); the password.

    ``member`` is the JupyterHub (or login) user name: the store's owner of a member's
    rows is that name, and row-level security compares it with the role's. The password
    is generated unless given; only its SCRAM verifier is sent, so the password itself
    never reaches the server's logs or statistics. ``con`` is the admin's connection.
    """
    secret = password or secrets.token_urlsafe(24)
    verifier = con.pgconn.encrypt_password(secret.encode(), member.encode(), b"scram-sha-256")
    role = sql.Identifier(member)
    exists = con.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [member]).fetchone()
    verb = sql.SQL("ALTER" if exists else "CREATE")
    try:
        with con.transaction():
            con.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    verb, role, sql.Literal(verifier.decode())
                )
            )
            con.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(team), role))
    except psycopg.errors.InsufficientPrivilege as exc:
        admin = _can_create_roles(con)[0]
        first = (str(exc).strip().splitlines() or ["permission denied"])[0]
        raise StoreError(
            f"Role {admin!r} cannot add the member {member!r}: {first}. "
            + _ADMIN_NEEDS.format(admin=admin)
        ) from exc
    except psycopg.Error as exc:
        raise StoreError(f"Could not add the member {member!r}: {exc}".strip()) from exc
    return secret


def _pgpass_field(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _pgpass_key(url: str) -> str:
    """Host, port, database and role of ``url`` as a pgpass line starts (escaped)."""
    parts = urlsplit(url)
    if not parts.username:
        raise ValueError(f"{display_url(url)} names no role (postgresql://ROLE@HOST/DATABASE).")
    fields = (
        parts.hostname or "localhost",
        str(parts.port) if parts.port else "*",
        unquote(parts.path.lstrip("/")) or "*",
        unquote(parts.username),
    )
    return ":".join(_pgpass_field(f) for f in fields)


def pgpass_line(url: str, password: str) -> str:
    """The ``~/.pgpass`` line giving ``url``'s role ``password`` (libpq's format, escaped)."""
    return f"{_pgpass_key(url)}:{_pgpass_field(password)}"


def write_pgpass(
    path: str | os.PathLike, url: str, password: str, *, owner: str | None = None
) -> None:
    """Put ``url``'s password into the pgpass file ``path`` (mode 600, owned by ``owner``).

    A line for the same host, port, database and role is replaced; other lines stay.
    libpq ignores a pgpass file that others may read, so the mode is always 600.
    """
    line = pgpass_line(url, password)
    key = _pgpass_key(url) + ":"
    target = Path(path)
    kept = []
    if target.exists():
        kept = [x for x in target.read_text().splitlines() if x and not x.startswith(key)]
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join([*kept, line]) + "\n")
    os.chmod(target, 0o600)
    if owner is not None:
        import pwd  # POSIX only, like a file owner

        user = pwd.getpwnam(owner)
        os.chown(target, user.pw_uid, user.pw_gid)
