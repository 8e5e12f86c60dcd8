"""The chaos control service's OpenAPI 3.0 document, served at ``GET /openapi.json``.

Written by hand next to the routes in :mod:`harness.control.api`, from the same constants (actions,
limits, the name pattern); the test suite validates it and checks every route is in it.
"""

from __future__ import annotations

from typing import Any

from fake_portal.openapi import MAX_SEQ, envelope

from .actions import FROM_PORTAL, RELAY_ACTIONS, UNDO
from .journal import CAPACITY
from .targets import NAME

MAX_DURATION_S = 3600.0

_NAME = {"type": "string", "pattern": f"^{NAME.pattern}$"}
_DURATION = {
    "type": "number",
    "minimum": 0,
    "exclusiveMinimum": True,
    "maximum": MAX_DURATION_S,
    "nullable": True,
    "description": "seconds after which the action is undone (absent: until reversed by hand)",
}
_ERROR = {
    "description": "refused: bad input (400), no token (401), foreign Host, cross-origin or a container that is "
    "not this stack's (403), no such container or route (404), wrong method (405), Docker or the container "
    "refused, or the fault is already on (409), body too large (413)",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "action": {"type": "object", "nullable": True}},
            }
        }
    },
}
_ENTRY = {
    "type": "object",
    "required": ["seq", "ts", "action", "target", "params", "outcome", "took_s", "end", "until", "undo_of"],
    "properties": {
        "seq": {"type": "integer", "minimum": 1},
        "ts": {"type": "number"},
        "action": {"type": "string"},
        "target": {"type": "string"},
        "params": {"type": "object"},
        "outcome": {"type": "string", "description": "pending, ok, or failed: <why>"},
        "took_s": {"type": "number", "nullable": True},
        "end": {"type": "number", "nullable": True, "description": "when its effect ended (null: it lasts)"},
        "until": {"type": "number", "nullable": True, "description": "when its duration undoes it"},
        "undo_of": {"type": "integer", "nullable": True},
        "result": {"type": "object"},
    },
}
_TARGET = {
    "type": "object",
    "required": ["name", "role", "container", "status"],
    "properties": {
        "name": {"type": "string"},
        "role": {"type": "string"},
        "peer_id": {"type": "string", "nullable": True},
        "container": {"type": "string"},
        "status": {"type": "string"},
    },
}


def _ok(schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


def _action(summary: str, param: str, body: dict[str, Any] | None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [{"name": param, "in": "path", "required": True, "schema": _NAME}],
        "responses": {"200": _ok(_ENTRY), "4XX": _ERROR, "502": {**_ERROR, "description": "the portal refused"}},
    }
    if body is not None:
        op["requestBody"] = body
    return {"post": op}


_FROM = {"type": "string", "pattern": f"^{NAME.pattern}$", "description": f"{FROM_PORTAL!r} (default) or a relay"}


def openapi_document(*, token: bool = True) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/api/health": {
            "get": {
                "summary": "Liveness; needs no token",
                "security": [],
                "responses": {"200": _ok({"type": "object", "required": ["ok"]}), "4XX": _ERROR},
            }
        },
        "/api/targets": {
            "get": {
                "summary": "This stack's relays and peers: what the actions may name",
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "required": ["stack", "relays", "peers"],
                            "properties": {
                                "stack": {"type": "string"},
                                "relays": {"type": "array", "items": _TARGET},
                                "peers": {"type": "array", "items": _TARGET},
                            },
                        }
                    ),
                    "4XX": _ERROR,
                },
            }
        },
        "/api/history": {
            "get": {
                "summary": f"The actions after `since`, oldest first (the last {CAPACITY} are kept)",
                "parameters": [
                    {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": CAPACITY}},
                ],
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "required": ["last_seq", "actions"],
                            "properties": {
                                "last_seq": {"type": "integer"},
                                "actions": {"type": "array", "items": _ENTRY},
                            },
                        }
                    ),
                    "4XX": _ERROR,
                },
            }
        },
    }
    for action in RELAY_ACTIONS:
        timed = action in UNDO
        body = _body({"duration_s": _DURATION}, []) if timed else None
        summary = f"{action.capitalize()} a relay container" + (
            f" (a duration: {UNDO[action]} after it)" if timed else ""
        )
        paths[f"/api/relays/{{relay}}/{action}"] = _action(summary, "relay", body)
    paths["/api/relays/{relay}/loss"] = _action(
        "Drop this share of the UDP datagrams arriving at a relay (iptables in it)",
        "relay",
        _body(
            {
                "probability": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
                "duration_s": _DURATION,
            },
            ["probability"],
        ),
    )
    paths["/api/relays/{relay}/clear-loss"] = _action("End a relay's UDP loss", "relay", None)
    paths["/api/peers/{peer}/partition"] = _action(
        "Cut a peer off the portal (its admin API) or off one relay (iptables in the relay)",
        "peer",
        _body({"from": _FROM, "duration_s": _DURATION}, []),
    )
    paths["/api/peers/{peer}/heal"] = _action(
        "End a peer's partition from the portal or from a relay", "peer", _body({"from": _FROM}, [])
    )
    return envelope("connlib-relays chaos control", paths, bearer="token" if token else None)
