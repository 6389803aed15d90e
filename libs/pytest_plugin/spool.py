"""The spool file: what the plugin could not deliver, kept so ``atas upload-spool FILE`` sends it
later.

JSON lines, one record each, in the order they were written:

* ``{"v": 1, "type": "execution", "body": {...}}`` — the create request (always the first line);
* ``{"v": 1, "type": "results", "execution_id": "...", "results": [...]}`` — a batch;
* ``{"v": 1, "type": "finish", "execution_id": "...", "body": {...}}`` — the finish request.

Replaying is safe however often it happens: the execution id, the create body (with its start
time) and every result's id were chosen by the plugin before the first attempt to send them, so
the ingest API recognises what it already stored (same create body → the same execution; same
result id or test_id + attempt → counted as a duplicate; finishing again → unchanged). No URL or
token is written: the file may end up as a CI artefact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from atas.common.schemas import ExecutionCreate, ExecutionFinish

if TYPE_CHECKING:  # imported by whoever sends: aiohttp is not loaded on the pytest main thread
    from atas.client import Client

SPOOL_VERSION = 1
# A request stays far below the API's default 10 MiB body limit (INGEST_MAX_BODY_BYTES) whatever
# the traces weigh; sizes are estimated from the long fields, which dominate.
BATCH_MAX_BYTES = 4 * 1024 * 1024
_encoder = msgspec.json.Encoder()


class SpoolError(Exception):
    """The file is not a spool this version can replay; the message says which line and why."""


class SpoolWriter:
    """Appends records to one spool file, opened on first use (a run that delivers everything
    leaves no file). Thread-safe: the sender thread and the pytest main thread both write."""

    def __init__(self, path: Path, execution: dict[str, Any]):
        self.path = path
        self._execution = execution
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()
        self.results = 0

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab")
                self._file.write(_encoder.encode({"v": SPOOL_VERSION, "type": "execution",
                                                  "body": self._execution}) + b"\n")
            self._file.write(_encoder.encode(record) + b"\n")
            # Flushed per record: the process may be killed right after the suite (a CI timeout).
            self._file.flush()
            if record["type"] == "results":
                self.results += len(record["results"])

    @property
    def used(self) -> bool:
        return self._file is not None

    def add_results(self, results: list[dict[str, Any]]) -> None:
        if results:
            self._write({"v": SPOOL_VERSION, "type": "results", "execution_id": self._execution["id"],
                         "results": results})

    def finish(self, body: dict[str, Any]) -> None:
        self._write({"v": SPOOL_VERSION, "type": "finish", "execution_id": self._execution["id"], "body": body})

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()


class Spool(msgspec.Struct):
    execution: dict[str, Any]
    batches: list[list[dict[str, Any]]]
    finish: dict[str, Any] | None


def read_spool(path: Path) -> Spool:
    """Parse a spool file. A last line cut short (the process was killed mid-write) is ignored;
    anything else malformed raises :class:`SpoolError`."""
    lines = path.read_bytes().split(b"\n")
    execution: dict[str, Any] | None = None
    batches: list[list[dict[str, Any]]] = []
    finish = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                break  # a torn final write
            raise SpoolError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(record, dict) or record.get("v") != SPOOL_VERSION:
            raise SpoolError(f"{path}:{number}: not a version {SPOOL_VERSION} spool record")
        kind = record.get("type")
        if kind == "execution":
            if execution is not None and record["body"] != execution:
                raise SpoolError(f"{path}:{number}: a second, different execution in one spool file")
            execution = record["body"]
        elif kind == "results":
            batches.append(record["results"])
        elif kind == "finish":
            finish = record["body"]
        else:
            raise SpoolError(f"{path}:{number}: unknown record type {kind!r}")
    if execution is None:
        raise SpoolError(f"{path}: no execution record; is this an ATAS spool file?")
    return Spool(execution, batches, finish)


def start_execution(client: Client, body: dict[str, Any]):
    """``POST /v1/executions`` with exactly ``body`` (validated as the API's create request)."""
    req = msgspec.convert(body, ExecutionCreate)
    return client.start_execution(req.project, req.name, id=req.id, environment=req.environment,
                                  branch=req.branch, commit=req.commit, build_url=req.build_url,
                                  started_at=req.started_at, attributes=req.attributes)


def finish_execution(client: Client, execution_id: str, body: dict[str, Any]):
    req = msgspec.convert(body, ExecutionFinish)
    return client.finish_execution(execution_id, req.status, req.finished_at)


def replay(client: Client, spool: Spool, *, batch_size: int = 500,
           progress: Callable[[int], None] | None = None):
    """Send a spool: create (or find) the execution, its results, then finish it. Returns
    (execution after the last call, results accepted, duplicates)."""
    execution = start_execution(client, spool.execution)
    accepted = duplicates = 0
    done = 0
    for batch in split_batches([r for batch in spool.batches for r in batch], batch_size):
        answer = client.add_results(execution.id, batch, batch_size=len(batch))
        accepted += answer.accepted
        duplicates += answer.duplicates
        done += len(batch)
        if progress is not None:
            progress(done)
    if spool.finish is not None:
        execution = finish_execution(client, str(execution.id), spool.finish)
    return execution, accepted, duplicates


def result_size(result: dict[str, Any]) -> int:
    """Estimated bytes of one result in a request body."""
    return 400 + len(result.get("error_trace") or "") + len(result.get("error_message") or "")


def split_batches(results: list[dict[str, Any]], max_count: int) -> list[list[dict[str, Any]]]:
    """``results`` in batches of at most ``max_count`` results and about BATCH_MAX_BYTES."""
    out: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for r in results:
        cost = result_size(r)
        if batch and (len(batch) >= max_count or size + cost > BATCH_MAX_BYTES):
            out.append(batch)
            batch, size = [], 0
        batch.append(r)
        size += cost
    if batch:
        out.append(batch)
    return out


def iso(epoch: float | datetime) -> str:
    """RFC 3339 in UTC, as the API wants timestamps."""
    moment = epoch if isinstance(epoch, datetime) else datetime.fromtimestamp(epoch, timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()
