"""Server-Sent Events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html).

Every event carries ``id:`` (its history position) and ``event:`` (its type); ``data:`` is the
envelope JSON on one line (msgspec never emits raw newlines). A block with only ``id:`` and no data
moves the client's ``lastEventId`` without dispatching anything: used to advance a filtered
client's resume point and at connect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from .history import Pos, format_pos

if TYPE_CHECKING:
    from .history import Event

_encoder = msgspec.json.Encoder()

HEARTBEAT = b": heartbeat\n\n"

# Reasons of the final `event: end` before the server closes a stream.
END_SLOW = "slow_consumer"
END_TOKEN = "token_expired"
END_SHUTDOWN = "shutdown"
END_MESSAGES = {
    END_SLOW: "the client did not read events fast enough; reconnect (Last-Event-ID resumes)",
    END_TOKEN: "the access token expired; reconnect with a fresh token",
    END_SHUTDOWN: "this server is shutting down; reconnect (Last-Event-ID resumes)",
}


def event_frame(event: "Event") -> bytes:
    head = b"id: " + format_pos(event.pos).encode() + b"\n" if event.pos is not None else b""
    return head + b"event: " + event.type.encode() + b"\ndata: " + event.payload + b"\n\n"


def id_frame(pos: Pos) -> bytes:
    return b"id: " + format_pos(pos).encode() + b"\n\n"


def retry_frame(retry_ms: int) -> bytes:
    return b"retry: " + str(retry_ms).encode() + b"\n"


def control_frame(event: str, data: dict[str, Any], pos: Pos | None = None) -> bytes:
    head = b"id: " + format_pos(pos).encode() + b"\n" if pos is not None else b""
    return head + b"event: " + event.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


def end_frame(reason: str) -> bytes:
    return control_frame("end", {"reason": reason, "message": END_MESSAGES[reason]})


def reset_frame(pos: Pos, reason: str) -> bytes:
    """Tell the client its view has a hole: refetch state from the query service, then go on live.

    Carries the current position as its id, so a later reconnect resumes from here.
    """
    return control_frame("reset", {
        "reason": reason,
        "message": "some events cannot be replayed; refetch the current state from the query API",
    }, pos)
