"""The admin API's OpenAPI 3.0 document, served at ``GET /openapi.json``.

Written by hand next to the routes in :mod:`fake_portal.admin`; the test suite fuzzes the running
API from this document with schemathesis, so a route or a shape that drifts from it fails there.
"""

from __future__ import annotations

from typing import Any

from connlib.core.messages import ID_PATTERN
from fake_portal.chaos_proxy import PATH as CHAOS_PATH

MAX_SEQ = 2**53
MAX_EVENTS_LIMIT = 10_000
MAX_PARTITION_SECONDS = 7 * 86400

_ID = {"type": "string", "pattern": f"^{ID_PATTERN}$"}
_ERROR = {
    "description": "refused: bad parameters (400), no admin token (401), foreign Host or cross-origin (403), "
    "no such route or relay (404), wrong method (405), body too large (413)",
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        }
    },
}
_OBJECT: dict[str, Any] = {"type": "object"}
_LIST: dict[str, Any] = {"type": "array", "items": {"type": "object"}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _get(summary: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": _ok(schema), "4XX": _ERROR}, **extra}}


def _post(summary: str, schema: dict[str, Any], body: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": _ok(schema), "4XX": _ERROR}, **extra}
    if body is not None:
        op["requestBody"] = body
    return {"post": op}


_PEERS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["id", "online", "relays", "partitioned"],
        "properties": {
            "id": {"type": "string"},
            "online": {"type": "boolean"},
            "relays": {"type": "array", "items": {"type": "string"}},
            "partitioned": {"type": "boolean"},
            "partitioned_until": {"type": "number", "nullable": True},
        },
    },
}
_RELAYS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["id", "name", "addr", "addrs", "online", "secret_fingerprint", "since"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "addr": {"type": "string"},
            "addrs": {"type": "array", "items": {"type": "string"}},
            "online": {"type": "boolean"},
            "secret_fingerprint": {"type": "string"},
            "since": {"type": "number"},
        },
    },
}
_EVENTS = {
    "type": "object",
    "required": ["last_seq", "events"],
    "properties": {
        "last_seq": {"type": "integer", "minimum": 0},
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["seq", "ts", "kind"],
                "properties": {"seq": {"type": "integer"}, "ts": {"type": "number"}, "kind": {"type": "string"}},
            },
        },
    },
}
_OVERVIEW = {
    "type": "object",
    "required": ["now", "relays", "clients", "gateways", "connections", "streams", "last_seq"],
    "properties": {
        "now": {"type": "number"},
        "relays": _RELAYS,
        "clients": _PEERS,
        "gateways": _PEERS,
        "connections": _LIST,
        "streams": _LIST,
        "last_seq": {"type": "integer"},
    },
}


def _json_body(schema: dict[str, Any], required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def openapi_document(*, token: bool = False) -> dict[str, Any]:
    """The document; with ``token`` it declares the bearer scheme every route but health needs."""
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "The dashboard page (self-contained HTML; polls /api/overview and /api/events)",
                "parameters": [
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "the admin token; sets the dashboard's HttpOnly cookie",
                    }
                ],
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {}}},
                    "303": {"description": "a valid token: its cookie is set, redirect to /"},
                    "4XX": _ERROR,
                },
            }
        },
        "/api/health": _get("Liveness; needs no admin token", {"type": "object", "required": ["ok"]}, security=[]),
        "/api/overview": _get("Everything the dashboard shows, at one instant", _OVERVIEW),
        "/api/relays": _get("Relays, online or not, with their secret's fingerprint", _RELAYS),
        "/api/clients": _get("Clients the portal remembers", _PEERS),
        "/api/gateways": _get("Gateways the portal remembers", _PEERS),
        "/api/connections": _get("Signalling seen between clients and gateways", _LIST),
        "/api/streams": _get("Each client's latest stream_stats and a short history", _LIST),
        "/api/events": _get(
            "The event log after `since`, at most `limit` entries",
            _EVENTS,
            parameters=[
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_EVENTS_LIMIT},
                },
            ],
        ),
        "/api/partition": _post(
            "Cut a peer or relay off (close its sockets, refuse it) until healed or for `seconds`",
            {
                "type": "object",
                "required": ["id", "until", "sockets_closed"],
                "properties": {
                    "id": {"type": "string"},
                    "until": {"type": "number", "nullable": True},
                    "sockets_closed": {"type": "integer"},
                },
            },
            _json_body(
                {
                    "type": "object",
                    "required": ["id"],
                    "additionalProperties": False,
                    "properties": {
                        "id": _ID,
                        "seconds": {
                            "type": "number",
                            "exclusiveMinimum": True,
                            "minimum": 0,
                            "maximum": MAX_PARTITION_SECONDS,
                            "nullable": True,
                        },
                    },
                },
                required=True,
            ),
        ),
        "/api/heal": _post(
            "Heal one partition, or all without an id",
            {"type": "object", "required": ["healed"], "properties": {"healed": {"type": "array"}}},
            _json_body(
                {"type": "object", "additionalProperties": False, "properties": {"id": {**_ID, "nullable": True}}},
                required=False,
            ),
        ),
        "/api/relays/{relay_id}/disconnect": _post(
            "Close an online relay's socket (it leaves presence; its agent may re-join)",
            {"type": "object", "required": ["disconnected"], "properties": {"disconnected": {"type": "string"}}},
            None,
            parameters=[{"name": "relay_id", "in": "path", "required": True, "schema": _ID}],
        ),
        "/api/relays/{relay_id}/rotate-credentials": _post(
            "New credentials for an online relay that did not reboot (same secret, new usernames), "
            "pushed to every peer as one relays_presence",
            {
                "type": "object",
                "required": ["rotated", "rotation"],
                "properties": {"rotated": {"type": "string"}, "rotation": {"type": "integer"}},
            },
            None,
            parameters=[{"name": "relay_id", "in": "path", "required": True, "schema": _ID}],
        ),
    }
    chaos_path = [
        {
            "name": "path",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": f"^{CHAOS_PATH.pattern}$"},
            "description": "a route of the chaos service under /api/ (its own /openapi.json lists them)",
        }
    ]
    chaos_responses = {
        "200": _ok(_OBJECT, "the chaos service's answer"),
        "4XX": _ERROR,
        "502": {**_ERROR, "description": "the chaos service did not answer"},
    }
    paths["/api/chaos/{path}"] = {
        "get": {
            "summary": "Passed to the stack's chaos control service (GET /api/<path>); 404 without one",
            "parameters": chaos_path,
            "responses": chaos_responses,
        },
        "post": {
            "summary": "Passed to the stack's chaos control service (POST /api/<path>); 404 without one",
            "parameters": chaos_path,
            "requestBody": _json_body(_OBJECT, required=False),
            "responses": chaos_responses,
        },
    }
    return envelope("fake_portal admin API", paths, bearer="adminToken" if token else None)


def envelope(title: str, paths: dict[str, Any], *, bearer: str | None) -> dict[str, Any]:
    """An OpenAPI 3.0 document of ``paths``; with ``bearer``, every operation but those that say
    ``security: []`` needs that bearer token scheme."""
    doc: dict[str, Any] = {"openapi": "3.0.3", "info": {"title": title, "version": "1"}, "paths": paths}
    if bearer:
        doc["components"] = {"securitySchemes": {bearer: {"type": "http", "scheme": "bearer"}}}
        doc["security"] = [{bearer: []}]
    return doc
