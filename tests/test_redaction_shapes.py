"""Credentials recognised by their shape are redacted, however a text is cased or long.

The pattern is searched only in text that holds one of its literal parts
(``redaction._may_hold_credential``): these tests fail if that search ever lets a
credential the pattern would catch through.
"""

from __future__ import annotations

import itertools

from jupyter_agent.core import redaction
from jupyter_agent.core.redaction import REDACTED, redact

TOKEN = "abc123DEF456ghi789JKL"
SHAPES = [
    f"Authorization: Bearer {TOKEN}",
    f'"authorization": "token {TOKEN}"',
    f"AUTHORIZATION=Basic {TOKEN}",
    f"curl -H 'Bearer {TOKEN}'",
    f"bEaReR {TOKEN}",
    f"authorızation: bearer {TOKEN}",  # a dotless i: (?i) matches it to "i"
    f"AUTHORİZATION: digest {TOKEN}",  # a dotted capital I, likewise
    f"key sk-{TOKEN}xyz",
    f"token ghp_{TOKEN}{TOKEN}",
    f"slack xoxb-{TOKEN}",
    "aws AKIAABCDEFGHIJKLMNOP",
]


def full_pattern(text: str) -> str:
    """What the shape pattern alone makes of a text (no secrets given)."""
    return redaction._CREDENTIAL.sub(lambda m: (m.group(1) or m.group(2) or "") + REDACTED, text)


def test_every_credential_shape_is_redacted_in_any_case_and_context():
    cases = [str.upper, str.lower, str.title, lambda s: s]
    for shape, case, (before, after) in itertools.product(
        SHAPES, cases, [("", ""), ("x" * 5000 + "\n", "\n" + "y" * 5000)]
    ):
        text = before + case(shape) + after
        assert redact(text, []) == full_pattern(text), text[:80]
    for shape in SHAPES:
        assert TOKEN not in redact(shape, []) and REDACTED in redact(shape, []), shape


def test_text_without_a_credential_is_left_as_it_is():
    plain = "\n".join(f"{i:3d} e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                      for i in range(15))  # fmt: skip
    for text in [plain, "the author of a bearer bond", "risk-free", "gh_pages", ""]:
        assert redact(text, []) == text


def test_a_checkpoint_row_is_stored_redacted_whatever_the_secret_or_where_it_is(tmp_path):
    """The writer searches a row's JSON whole before redacting value by value: a row it
    leaves alone must be one redaction leaves alone, for secrets JSON keeps as they are
    and for those it escapes (a quote, a backslash, a non-ASCII letter)."""
    import json

    from jupyter_agent.store.api import CHECKPOINT_COLUMNS, CheckpointRow
    from jupyter_agent.store.duckdb import journal
    from jupyter_agent.store.duckdb.store import DuckDBStore

    secrets_cases = [
        ["plain-secret-123"],
        ['quo"ted-secret-1'],
        ["back\\slash-secret"],
        ["clé-secrète-42"],
    ]
    for n, secrets in enumerate(secrets_cases):
        secret = secrets[0]
        infos = [
            {"code": "print(1)"},  # nothing to redact
            {"code": f"key = {secret!r}", "nested": [{"deep": f"x{secret}y"}]},
            {"code": f"headers = {{'Authorization': 'Bearer {TOKEN}'}}"},
            {"note": "ünïcödé and no secret", "n": 3},
        ]
        store = DuckDBStore(tmp_path / f"s{n}" / "agents.duckdb")
        writer = store.writer("run", secrets)
        rows = []
        for step, info in enumerate(infos):
            row = CheckpointRow(
                "run", step, "tool_call", "running", f"summary {step}", 1.0, 0.0, 0, 0, info
            )
            rows.append(row)
            writer.put_checkpoint(row, b"{}")
        writer.close(merge=False)
        (path,) = store.journal_dir.glob("*" + journal.SUFFIX)
        stored = [r.row for r in journal.decode(path.read_bytes()).records]
        for row, got in zip(rows, stored, strict=True):
            expected = redact({c: getattr(row, c) for c in CHECKPOINT_COLUMNS}, secrets)
            assert json.loads(got["info"]) == expected["info"], (secrets, got)
            assert secret not in got["info"] and TOKEN not in got["info"]
