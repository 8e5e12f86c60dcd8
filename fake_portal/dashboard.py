"""The page at ``GET /`` of the admin API: a placeholder that lists relays and peers.

Kept apart from the API so a richer dashboard can replace ``render`` without touching routing.
"""

from __future__ import annotations

from html import escape
from typing import Any


def _rows(items: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(item.get(c, '')))}</td>" for c in columns) + "</tr>" for item in items)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(relays: list[dict[str, Any]], clients: list[dict[str, Any]], gateways: list[dict[str, Any]]) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>fake_portal</title></head><body>"
        "<h1>fake_portal</h1>"
        f"<h2>Relays</h2>{_rows(relays, ('id', 'name', 'addrs', 'online', 'secret_fingerprint', 'since'))}"
        f"<h2>Clients</h2>{_rows(clients, ('id', 'name', 'online', 'relays', 'partitioned'))}"
        f"<h2>Gateways</h2>{_rows(gateways, ('id', 'name', 'online', 'relays', 'partitioned'))}"
        "<p>JSON: /api/relays · /api/clients · /api/gateways · /api/connections · /api/events</p>"
        "</body></html>"
    )
