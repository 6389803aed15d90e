"""The plugin's HTTP transport: blocking ``http.client`` on the sender thread, one keep-alive
connection, JSON bodies through msgspec.

Why not :class:`atas.client.Client`, which ``atas upload-spool`` uses: it runs aiohttp in an event
loop of its own. Importing aiohttp alone costs 0.2 CPU seconds (``python -c "import atas.client"``:
0.24 s user vs 0.01 s for a bare interpreter), taken from the tests through the GIL; on the 5,000
trivial tests of ``scripts/bench pytest-plugin`` (about 4 s of pytest) the plugin on atas.client
cost +0.5-0.7 CPU s per run with ATAS down, this transport none measurable.
The requests, their bodies and the idempotency rules are the client's: the same endpoints with
client-chosen execution and result ids, so either may replay what the other sent.
"""

from __future__ import annotations

import http.client
import random
import time
from typing import Any
from urllib.parse import urlsplit

import msgspec

# The statuses atas.client retries: the server (or a proxy in front of it) is briefly unable to answer.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_encoder = msgspec.json.Encoder()


class DeliveryError(Exception):
    """A request failed; ``status`` is 0 when the server could not be reached or did not answer."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status} {message}" if status else message)
        self.status = status


def _message(status: int, payload: bytes) -> str:
    try:
        error = msgspec.json.decode(payload).get("error", {})
        field = f" (field {error['field']})" if error.get("field") else ""
        return f"{error.get('code', 'error')}: {error.get('message', '')}{field}"
    except (msgspec.DecodeError, AttributeError):
        return payload[:300].decode(errors="replace")


class Transport:
    """POSTs JSON to the ingest API. ``timeout_s`` bounds each connect, send and read; a failed
    request is retried ``retries`` times after ``backoff_s`` (or the server's Retry-After, capped)."""

    def __init__(self, url: str, token: str, *, timeout_s: float, retries: int = 1, backoff_s: float = 0.25,
                 backoff_max_s: float = 2.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the ATAS URL must be http(s)://host[:port][/path], got {url!r}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                         "User-Agent": "atas-pytest-plugin"}
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                import ssl  # only for https: its import and the CA bundle cost tens of milliseconds

                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s,
                                                         context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON; the decoded answer, or DeliveryError."""
        data = _encoder.encode(body)
        attempt = 0
        while True:
            retry_after = None
            try:
                conn = self._connection()
                conn.request("POST", self._base + path, body=data, headers=self._headers)
                resp = conn.getresponse()
                payload = resp.read()
                if resp.status < 400:
                    return msgspec.json.decode(payload)
                error = DeliveryError(resp.status, _message(resp.status, payload))
                if resp.status not in RETRY_STATUSES or attempt >= self.retries:
                    raise error
                retry_after = resp.getheader("Retry-After")
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, half an answer
                self.close()
                if attempt >= self.retries:
                    raise DeliveryError(0, f"POST {self._base + path} to {self._host} failed after {attempt + 1} "
                                           f"attempts: {type(exc).__name__}: {exc}") from None
            attempt += 1
            time.sleep(self._delay(attempt, retry_after))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.backoff_max_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
