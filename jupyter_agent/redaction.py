"""Keep secrets out of checkpoints.

The API key in use, and every environment value whose name looks like a secret
(``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*`` …), are replaced by
``[REDACTED]`` in stored messages, and a namespace value whose serialized bytes
contain one of them is not stored at all.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
_MIN_LENGTH = 8  # shorter values are too likely to occur by chance


def secrets_in_environment(*extra: str | None) -> list[str]:
    """Secret values to redact: ``extra`` (e.g. the API key) and secret-looking env values."""
    found = {v for v in extra if v and len(v) >= _MIN_LENGTH}
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name) and len(value) >= _MIN_LENGTH:
            found.add(value)
    # Longest first, so a secret containing another is replaced whole.
    return sorted(found, key=len, reverse=True)


def redact(value: Any, secrets: list[str]) -> Any:
    """A copy of a JSON-like value with every secret string replaced."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value


def contains_secret(data: bytes, secrets: list[str]) -> bool:
    return any(s.encode() in data for s in secrets)
