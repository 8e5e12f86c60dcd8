"""Structured ``key=value`` log fields, so that humans and grep read the same line.

``kv(**fields)`` is lazy: it renders only when the record is formatted (``str``), so a
``log.debug("... %s", kv(...))`` that no handler takes costs no formatting.
"""

from __future__ import annotations


class Fields:
    """Fields rendered as ``k=v`` pairs on ``str``; values with spaces or quotes are quoted."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, object]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        parts = []
        for key, value in self.fields.items():
            text = str(value)
            if not text or any(c.isspace() for c in text) or '"' in text:
                text = '"' + text.replace('"', '\\"') + '"'
            parts.append(f"{key}={text}")
        return " ".join(parts)

    __repr__ = __str__


def kv(**fields: object) -> Fields:
    """The fields, rendered as ``k=v`` pairs when the log record is formatted."""
    return Fields(fields)
