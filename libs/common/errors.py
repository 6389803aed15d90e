"""JSON errors for every endpoint, and request-body decoding that names the offending field.

Every error body has one shape: ``{"error": {"status", "code", "message", "field"?, "details"?}}``.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from .messages import explain, struct_fields

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


# A lone UTF-16 surrogate escape (\ud800 not followed by a low surrogate) is not Unicode; msgspec
# reports it as "Input data was truncated", which sends the reader looking for a cut-off body.
_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                        rb"|(?<![89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")
# RFC 3339 allows a lowercase `t` and `z`; msgspec accepts `z` but not `t`.
_LOWER_T = re.compile(r"^(\d{4}-\d{2}-\d{2})t(\d)")


def _retry_lowercase_t(body: bytes, type_: type[T], field: str | None) -> T | None:
    """The body decoded again with ``field``'s ``2026-01-31t…`` written ``2026-01-31T…``, or None."""
    if not field:
        return None
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    parent, key = doc, None
    for index, name in re.findall(r"\[(\d+)\]|([^.\[\]]+)", field):
        if key is not None:
            parent = parent[key]
        key = int(index) if index else name
        if not isinstance(parent, (list, dict)):
            return None
    try:
        value = parent[key]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(value, str) or not _LOWER_T.match(value):
        return None
    parent[key] = _LOWER_T.sub(r"\1T\2", value)
    return decode_json(msgspec.json.encode(doc), type_)


def decode_json(body: bytes, type_: type[T], *, decoder: msgspec.json.Decoder | None = None) -> T:
    """Decode and validate a JSON body, raising :class:`ApiError` (400 malformed, 422 invalid) with
    a message in words (:func:`atas.common.messages.explain`) and the field's path."""
    if not body:
        raise ApiError(400, "empty_body", "request body is empty; send a JSON document")
    try:
        if decoder is not None:
            return decoder.decode(body)
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        reason, field = validation_field(exc)
        if reason.startswith("Invalid RFC3339"):
            retried = _retry_lowercase_t(body, type_, field)
            if retried is not None:
                return retried
        message, field = explain(reason, type_, field)
        raise ApiError(422, "invalid_field", message, field=field) from None
    except msgspec.DecodeError as exc:
        if _SURROGATE.search(body):
            raise ApiError(400, "malformed_json",
                           "request body holds a lone UTF-16 surrogate escape (such as \\ud800 without its "
                           "pair), which is not valid Unicode; send text as UTF-8 or as complete surrogate "
                           "pairs") from None
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

    Every endpoint refuses what it does not understand the same way: an unknown parameter (a typo
    such as ``stauts`` would otherwise silently return everything unfiltered), a parameter given
    twice where one value is expected, a malformed value — 400 naming the parameter and saying what
    is accepted. A NUL character (``%00``) is refused in any parameter: no ATAS value can hold one
    (PostgreSQL text cannot), and every parameter ends up in SQL, a cache key or a stored row."""
    accepted = struct_fields(type_)
    params: dict[str, Any] = {}
    for key in request.query:
        if key not in accepted:
            known = f"accepted: {', '.join(accepted)}" if accepted else "this endpoint takes no query parameters"
            raise ApiError(400, "unknown_parameter", f"unknown query parameter `{key[:64]}`; {known}",
                           field=key[:64])
        values = request.query.getall(key)
        if any("\x00" in v for v in values):
            raise ApiError(400, "invalid_parameter", f"NUL characters are not allowed in query parameter `{key}`",
                           field=key)
        params[key] = values[0] if len(values) == 1 else values
    try:
        return msgspec.convert(params, type_, strict=False)
    except msgspec.ValidationError as exc:
        reason, field = validation_field(exc)
        if field is not None and isinstance(params.get(field), list) and "got `array`" in reason:
            message = f"query parameter `{field}` was given {len(params[field])} times; send it once"
        else:
            message, field = explain(reason, type_, field, noun="query parameter")
        raise ApiError(400, "invalid_parameter", message, field=field) from None
