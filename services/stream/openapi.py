"""OpenAPI fragment of the stream service (merged into ``/openapi.json``)."""

from __future__ import annotations

from atas.common.events import EVENT_TYPES
from atas.common.schemas import PROJECT_KEY_PATTERN

_ERROR = {"application/json": {"schema": {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["status", "code", "message"],
    "properties": {"status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"},
                   "field": {"type": "string"}, "details": {}}}}}}}

FRAGMENT: dict = {
    "tags": [{"name": "stream", "description": "Live execution updates (Server-Sent Events)"}],
    "paths": {
        "/v1/stream": {
            "get": {
                "tags": ["stream"],
                "operationId": "streamEvents",
                "summary": "Follow a project's events live (text/event-stream), with resume",
                "description": (
                    "Server-Sent Events. Every event has `id:` (its position in the project's history) "
                    "and `event:` (its type); `data:` is the event envelope "
                    "`{v, id, type, project, execution_id, seq, occurred_at, data}`. Reconnect with "
                    "`Last-Event-ID` (or `last_event_id`) to get exactly the missed events; when they "
                    "are no longer kept the stream starts with `event: reset` (refetch state from the "
                    "query API). Control events: `reset`, `end` (`data.reason`: `slow_consumer`, "
                    "`token_expired`, `shutdown`). Heartbeat comments keep idle streams open. The "
                    "token may come as Bearer header, `atas_token` cookie or `access_token` parameter "
                    "(EventSource cannot set headers). See docs/stream.md."
                ),
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "project", "in": "query", "required": True,
                     "schema": {"type": "string", "pattern": PROJECT_KEY_PATTERN}},
                    {"name": "execution", "in": "query", "required": False,
                     "description": "only events of this execution (a UUID)",
                     "schema": {"type": "string", "format": "uuid"}},
                    {"name": "types", "in": "query", "required": False,
                     "description": "comma-separated event types: " + ", ".join(EVENT_TYPES),
                     "schema": {"type": "string"}},
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "description": "resume after this event id", "schema": {"type": "string"}},
                    {"name": "last_event_id", "in": "query", "required": False,
                     "description": "same as the Last-Event-ID header", "schema": {"type": "string"}},
                    {"name": "access_token", "in": "query", "required": False,
                     "description": "the JWT, for clients that cannot send headers", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "the event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "400": {"description": "unknown or malformed parameter; `error.field` names it",
                            "content": _ERROR},
                    "401": {"description": "missing, invalid or expired token", "content": _ERROR},
                    "403": {"description": "token lacks stream:read or the project", "content": _ERROR},
                    "503": {"description": "connection cap reached or shutting down; see Retry-After",
                            "content": _ERROR},
                },
            }
        }
    },
}
