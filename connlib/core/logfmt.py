"""Structured ``key=value`` log fields, so that humans and grep read the same line."""

from __future__ import annotations


def kv(**fields: object) -> str:
    """Render fields as ``k=v`` pairs; values with spaces are quoted."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        if not text or any(c.isspace() for c in text) or '"' in text:
            text = '"' + text.replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)
