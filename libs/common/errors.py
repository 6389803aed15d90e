"""JSON errors for every endpoint, and request-body decoding that names the offending field.

Every error body has one shape: ``{"error": {"status", "code", "message", "field"?, "details"?}}``.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from aiohttp import web

T = TypeVar("T")

_ERROR_ENCODER = msgspec.json.Encoder()


class ApiError(Exception):
    """An error a client can act on; rendered as JSON by the error middleware."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None, details: Any = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.details = details

    def to_response(self) -> web.Response:
        return json_error(self.status, self.code, self.message, field=self.field,
                          headers=self.headers, details=self.details)


def json_error(status: int, code: str, message: str, *, field: str | None = None,
               headers: dict[str, str] | None = None, details: Any = None) -> web.Response:
    err: dict[str, Any] = {"status": status, "code": code, "message": message}
    if field is not None:
        err["field"] = field
    if details is not None:
        err["details"] = details
    return web.Response(status=status, body=_ERROR_ENCODER.encode({"error": err}),
                        content_type="application/json", headers=headers)


def bad_request(message: str, *, field: str | None = None, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message, field=field)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


_PATH_RE = re.compile(r" - at `([^`]*)`$")
_MISSING_RE = re.compile(r"^Object missing required field `([^`]*)`$")


def validation_field(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """Split msgspec's message into (reason, JSON path such as ``results[0].status``)."""
    text = str(exc)
    match = _PATH_RE.search(text)
    reason, path = (text[: match.start()], match.group(1)) if match else (text, "$")
    path = path[2:] if path.startswith("$.") else ("" if path == "$" else path.lstrip("$"))
    # "Object missing required field `x`" is reported at the parent: name the missing field itself.
    missing = _MISSING_RE.search(reason)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return reason, path or None


def decode_json(body: bytes, type_: type[T], *, decoder: msgspec.json.Decoder | None = None) -> T:
    """Decode and validate a JSON body, raising :class:`ApiError` (400 malformed, 422 invalid)."""
    if not body:
        raise ApiError(400, "empty_body", "request body is empty; send a JSON document")
    try:
        if decoder is not None:
            return decoder.decode(body)
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        reason, field = validation_field(exc)
        where = f" at `{field}`" if field else ""
        raise ApiError(422, "invalid_field", f"{reason}{where}", field=field) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None


async def read_json(request: web.Request, type_: type[T], *,
                    decoder: msgspec.json.Decoder | None = None) -> T:
    """Read the body of a JSON request: checks the content type (415) and size (413) first."""
    # aiohttp reports a missing Content-Type as application/octet-stream; a missing header is JSON.
    ctype = request.content_type if "Content-Type" in request.headers else "application/json"
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be application/json, got {ctype!r}")
    body = await read_body(request)
    return decode_json(body, type_, decoder=decoder)


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app._client_max_size  # what aiohttp enforced; not on the exception in 3.14
        raise ApiError(413, "payload_too_large",
                       f"request body exceeds the limit of {limit} bytes; split it into smaller batches",
                       details={"max_bytes": limit}) from None


def parse_query(type_: type[T], request: web.Request) -> T:
    """Validate query parameters into a msgspec Struct (``strict=False`` converts strings)."""
    params: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        params[key] = values[0] if len(values) == 1 else values
    try:
        return msgspec.convert(params, type_, strict=False)
    except msgspec.ValidationError as exc:
        reason, field = validation_field(exc)
        where = f" in query parameter `{field}`" if field else ""
        raise ApiError(400, "invalid_parameter", f"{reason}{where}", field=field) from None
