"""Delivery of results from a background thread, so the suite never waits for ATAS.

The pytest main thread only appends result dicts to a bounded queue. The ``atas-sender`` thread
creates the execution, sends the queue in batches (as soon as ``batch_max`` results wait, else every
``interval_s``) and finishes the execution when the session ends. The thread is woken once per
batch, not once per test: a thread woken for every result would take the GIL from the tests
thousands of times a second. The first time ATAS cannot be reached, answers 5xx after a retry, or refuses the
credentials, the sender stops talking to it for the rest of the session and everything from then
on (including the batch that failed and the finish) goes to the spool file; ``atas upload-spool``
delivers it later. A batch refused for its content (4xx) is spooled too, and sending goes on.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from typing import Any

from atas.pytest_plugin.spool import SpoolWriter, iso, split_batches
from atas.pytest_plugin.transport import DeliveryError, Transport

# Results waiting on the queue at most. When ATAS is slower than the suite the queue fills up and
# further results go to the spool instead (in chunks of _OVERFLOW_CHUNK) rather than waiting:
# 10,000 dicts are a few MB of memory.
QUEUE_MAX = 10_000
_OVERFLOW_CHUNK = 500
# Refusals that say "this server will not take anything from us now": stop trying, spool the rest.
_FATAL_STATUSES = frozenset({0, 401, 403, 404, 408, 429})


class Sender:
    """One session's delivery to ATAS; ``start()``, ``put()`` each result, ``close()`` at the end.

    ``problem`` holds the first reason something was spooled instead of sent (for the one warning
    the plugin prints); ``stored`` counts the results ATAS acknowledged, ``spool.results`` those
    written to the spool file.
    """

    def __init__(self, *, url: str, token: str, execution: dict[str, Any], spool: SpoolWriter,
                 timeout_s: float = 10.0, batch_max: int = 500, interval_s: float = 1.0,
                 queue_max: int = QUEUE_MAX):
        self.url, self.token = url, token
        self.execution = execution
        self.spool = spool
        self.timeout_s = timeout_s
        self.batch_max = batch_max
        self.interval_s = interval_s
        self.problem: str | None = None
        self.stored = 0
        self.finished: dict[str, Any] | None = None  # the execution as the finish call returned it
        # deque.append and popleft are atomic: the main thread never takes a lock to report.
        self._queue: deque[dict[str, Any]] = deque()
        self.queue_max = queue_max
        self._wake = threading.Event()
        self._overflow: list[dict[str, Any]] = []
        self._stopping = threading.Event()
        self._finish_body: dict[str, Any] | None = None
        self._offline = False  # ATAS gave up on: spool everything
        self._abandoned = False  # close() ran out of time; the main thread spooled what was left
        self._crashed = False
        self._inflight: list[dict[str, Any]] = []
        self._state = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="atas-sender", daemon=True)

    # ------------------------------------------------------------------ main thread
    def start(self) -> None:
        self._thread.start()

    def put(self, result: dict[str, Any]) -> None:
        waiting = len(self._queue)
        if waiting < self.queue_max:
            self._queue.append(result)
            if waiting + 1 == self.batch_max:
                self._wake.set()
        else:
            self._note("ATAS is slower than the test suite")
            self._overflow.append(prepare(result))
            if len(self._overflow) >= _OVERFLOW_CHUNK:
                self.spool.add_results(self._overflow)
                self._overflow = []

    def close(self, finish: dict[str, Any], deadline_s: float) -> None:
        """Deliver what is queued and finish the execution, waiting at most ``deadline_s``; what is
        still undelivered then is spooled (the thread may be stuck in a slow request)."""
        if self._overflow:
            self.spool.add_results(self._overflow)
            self._overflow = []
        self._finish_body = finish
        self._stopping.set()
        self._wake.set()
        self._thread.join(deadline_s)
        if not self._thread.is_alive():
            if not self._crashed:
                return
            pending = []  # the thread died early; it spooled what it held, the rest is queued
        else:
            with self._state:
                self._abandoned = True
                pending = list(self._inflight)
            self._note(f"ATAS did not answer within {deadline_s:g} s at the end of the session")
        pending.extend(self._drain())
        # Duplicates of the in-flight batch are harmless: replays skip what is stored.
        self.spool.add_results([prepare(r) for r in pending])
        self.spool.finish(finish)

    # ------------------------------------------------------------------ sender thread
    def _note(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem

    def _run(self) -> None:
        # One retry with a short back-off: a blip is absorbed, an outage is recognised within a
        # few seconds instead of atas.client's default half minute.
        client = None
        execution_id = self.execution["id"]
        try:
            client = Transport(self.url, self.token, timeout_s=self.timeout_s, retries=1)
            self._call(lambda: client.post("/v1/executions", self.execution), None)
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                for part in split_batches(batch, self.batch_max):
                    self._deliver(client, part)
            if self._finish_body is not None:
                self.finished = self._call(
                    lambda: client.post(f"/v1/executions/{execution_id}/finish", self._finish_body), "finish")
        except Exception as exc:  # a bug of ours must not lose results: spool what is left
            self._offline = self._crashed = True
            self._note(f"the ATAS plugin failed: {type(exc).__name__}: {exc}")
            with self._state:
                rest = list(self._inflight)
            rest.extend(prepare(r) for r in self._drain())
            self.spool.add_results(rest)
            if self._finish_body is not None:
                self.spool.finish(self._finish_body)
        finally:
            try:
                if client is not None:
                    client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not raise here
                pass

    def _drain(self, limit: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while limit is None or len(out) < limit:
            try:
                out.append(self._queue.popleft())
            except IndexError:
                break
        return out

    def _next_batch(self) -> list[dict[str, Any]] | None:
        """Up to ``batch_max`` results: at once when that many wait, else after ``interval_s``; at
        the end of the session whatever is left; None when everything is sent."""
        while True:
            if len(self._queue) < self.batch_max and not self._stopping.is_set():
                self._wake.wait(self.interval_s)
                self._wake.clear()
            batch = self._drain(self.batch_max)
            if batch:
                return [prepare(r) for r in batch]
            if self._stopping.is_set():
                return None

    def _deliver(self, client: Transport, batch: list[dict[str, Any]]) -> None:
        with self._state:
            if self._abandoned:  # close() gave up waiting: spool, the process is about to end
                self.spool.add_results(batch)
                return
            self._inflight = batch
        path = f"/v1/executions/{self.execution['id']}/results"
        answer = self._call(lambda: client.post(path, {"results": batch}), batch)
        if answer is not None:
            self.stored += answer["accepted"] + answer["duplicates"]
        with self._state:
            self._inflight = []

    def _call(self, request, spooled: list[dict[str, Any]] | str | None):
        """Run ``request`` unless ATAS was given up on; on failure spool ``spooled`` (a batch, or
        "finish") and decide whether to give up. Returns the answer or None."""
        if not self._offline:
            try:
                return request()
            except DeliveryError as exc:
                what = "finish" if spooled == "finish" else "results" if spooled else "execution"
                self._note(f"ATAS refused the {what}: {exc}" if exc.status else f"ATAS unreachable: {exc}")
                if exc.status in _FATAL_STATUSES or exc.status >= 500 or spooled is None:
                    self._offline = True
        # Spooled even after close() gave up waiting and spooled the in-flight batch itself: a
        # record twice is harmless, a record lost is not.
        if spooled == "finish":
            self.spool.finish(self._finish_body or {})
        elif spooled:
            self.spool.add_results(spooled)
        return None


def prepare(result: dict[str, Any]) -> dict[str, Any]:
    """Give a result its id (chosen here, once, so a replay is recognised as the same result) and
    its start time in RFC 3339; done off the pytest main thread where possible."""
    if "id" not in result:
        result["id"] = str(uuid.uuid4())
        start = result.get("started_at")
        if isinstance(start, float):
            result["started_at"] = iso(start)
    return result
