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
    except RecursionError:
        raise ApiError(400, "malformed_json", "request body is nested too deeply") from None


def check_json_content_type(request: web.Request) -> None:
    """415 unless the request says it carries JSON (a missing Content-Type counts as JSON)."""
    # aiohttp reports a missing Content-Type as application/octet-stream.
    ctype = request.content_type if "Content-Type" in request.headers else "application/json"
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"Content-Type must be application/json, got {ctype!r}")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 beyond ``limit`` bytes (before reading when Content-Length says so).

    Each service passes its own limit rather than relying on the application's ``client_max_size``,
    so the limit holds when ``atas dev`` serves every service from one app."""
    too_large = ApiError(413, "payload_too_large",
                         f"request body exceeds the limit of {limit} bytes; split it into smaller batches",
                         details={"max_bytes": limit})
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, type_: type[T], *, limit: int,
                    decoder: msgspec.json.Decoder | None = None) -> T:
    """Read and validate a JSON request body: content type (415), size (413), then :func:`decode_json`."""
    check_json_content_type(request)
    return decode_json(await read_body(request, limit), type_, decoder=decoder)


def parse_query(type_: type[T], request: web.Request) -> T:
    """Validate query parameters into a msgspec Struct (``strict=False`` converts strings).

    A NUL character (``%00``) is refused in any parameter: no ATAS value can hold one (PostgreSQL
    text cannot), and every parameter ends up in SQL, a cache key or a stored row."""
    params: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if any("\x00" in v for v in values):
            raise ApiError(400, "invalid_parameter", f"NUL characters are not allowed in query parameter `{key}`",
                           field=key)
        params[key] = values[0] if len(values) == 1 else values
    try:
        return msgspec.convert(params, type_, strict=False)
    except msgspec.ValidationError as exc:
        reason, field = validation_field(exc)
        where = f" in query parameter `{field}`" if field else ""
        raise ApiError(400, "invalid_parameter", f"{reason}{where}", field=field) from None
