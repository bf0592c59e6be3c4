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
