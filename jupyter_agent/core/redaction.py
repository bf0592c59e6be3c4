"""Keep secrets out of checkpoints.

The API key in use, and every environment value whose name looks like a secret
(``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*`` …), are replaced by
``[REDACTED]`` in stored messages, and a namespace value whose serialized bytes
contain one of them is not stored at all. The secret is looked for as UTF-8,
UTF-16 and UTF-32, each in both byte orders (little- and big-endian): the forms
pickled strings, ``str.encode`` and numpy text arrays (``<U``, ``>U``) hold.
Credentials that are not in the environment are caught by their shape where it
is unmistakable: an ``Authorization`` header's value, a ``Bearer`` token, and
common API key formats (OpenAI, GitHub, Slack, AWS access key ids).

Text an agent prints (a tool's output, the model's streamed reply) is redacted
the same way on its way to the cell, by a :class:`StreamRedactor`: it arrives
in pieces, so a line is let through once it is complete.

Not detected: a secret stored in a transformed form — base64, hex, URL-quoted,
compressed, encrypted or hashed, reversed, or split into pieces (``key[:10]``
and ``key[10:]`` in two strings, a list of its characters) — and a secret
shorter than 8 characters. Such values are stored like any other.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
_MIN_LENGTH = 8  # shorter values are too likely to occur by chance
_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")

# Group 1 (kept) is the label; the rest of the match is the credential.
_CREDENTIAL = re.compile(
    r"""((?i:authorization)["']?\s*[:=]\s*["']?(?i:bearer|basic|token|digest)\s+)[^\s"',}]{8,}"""
    r"""|(\b(?i:bearer)\s+)(?=[\w.~+/=-]*\d)[\w.~+/=-]{16,}"""
    r"""|()\b(?:sk-[\w-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}"""
    r"""|AKIA[0-9A-Z]{16})\b"""
)


#: What a text must hold for :data:`_CREDENTIAL` to match in it: "author" and "bearer"
#: lowercased (no character that ``(?i)`` matches to one of their letters lowercases to
#: another letter), the key formats' prefixes as they are. Searching for these is ten
#: times faster than the pattern, which tries its alternatives at every character.
_HINTS_LOWER = ("author", "bearer")
_HINTS = ("sk-", "xox", "AKIA")
_GITHUB = re.compile(r"gh[pousr]_")


def _may_hold_credential(text: str) -> bool:
    """False only where :data:`_CREDENTIAL` cannot match: most text, searched fast."""
    if any(h in text for h in _HINTS) or _GITHUB.search(text) is not None:
        return True
    low = text.lower()
    return any(h in low for h in _HINTS_LOWER)


def verbatim_in_json(secrets: list[str]) -> bool:
    """Whether every secret appears as it is in JSON text holding it (``json.dumps``, ASCII
    or not): printable ASCII without quotes or backslashes, which JSON escapes."""
    return all(s.isascii() and s.isprintable() and '"' not in s and "\\" not in s for s in secrets)


def nothing_to_redact(text: str, secrets: list[str]) -> bool:
    """True when :func:`redact` would leave ``text`` (or each string of a JSON text, where
    :func:`verbatim_in_json` holds for the secrets) as it is; False may be a false alarm."""
    return not _may_hold_credential(text) and not any(s in text for s in secrets)


def secrets_in_environment(*extra: str | None) -> list[str]:
    """Secret values to redact: ``extra`` (e.g. the API key) and secret-looking env values."""
    found = {v for v in extra if v and len(v) >= _MIN_LENGTH}
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name) and len(value) >= _MIN_LENGTH:
            found.add(value)
    # Longest first, so a secret containing another is replaced whole.
    return sorted(found, key=len, reverse=True)


def _redact_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _may_hold_credential(text) and _CREDENTIAL.search(text):
        text = _CREDENTIAL.sub(lambda m: (m.group(1) or m.group(2) or "") + REDACTED, text)
    return text


def redact(value: Any, secrets: list[str]) -> Any:
    """A copy of a JSON-like value with every secret string replaced."""
    if isinstance(value, str):
        return _redact_text(value, secrets)
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    return value


#: Bytes searched per call in a large value: other threads get the GIL between calls.
_WINDOW = 1 << 20


def contains_secret(data: bytes, secrets: list[str]) -> bool:
    needles = [s.encode(enc) for s in secrets for enc in _ENCODINGS]
    if len(data) <= _WINDOW:
        return any(n in data for n in needles)
    return any(
        data.find(n, start, start + _WINDOW + len(n) - 1) != -1
        for start in range(0, len(data), _WINDOW)
        for n in needles
    )


class StreamRedactor:
    """Redacts text that arrives in pieces: a stream's writes, a reply's chunks.

    A secret may be split between two pieces, and a credential is recognised by
    what precedes it on its line, so text is let through a line at a time: up
    to the last line break, the rest on the next one or on :meth:`drain`. A
    line longer than :attr:`LONG_LINE` is let through but for its last
    :attr:`KEEP` characters, so a stream without line breaks still shows.
    """

    LONG_LINE = 8192
    KEEP = 1024

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets
        self._pending = ""

    def feed(self, text: str) -> str:
        """What of the text so far can be shown now, redacted."""
        self._pending += text
        cut = self._pending.rfind("\n") + 1
        if not cut and len(self._pending) > self.LONG_LINE:
            cut = len(self._pending) - self.KEEP
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        return _redact_text(ready, self.secrets) if ready else ""

    def drain(self) -> str:
        """The rest, redacted: the stream is flushed or ends."""
        rest, self._pending = self._pending, ""
        return _redact_text(rest, self.secrets) if rest else ""
