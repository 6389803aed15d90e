"""pytest reports → ATAS results: one result per attempt of a test, from its setup, call and
teardown reports.

pytest reports a test in up to three phases; ATAS stores one attempt with one status. The status is
the one pytest's own summary line counts the test under: an error in setup is ``error``, a failure
in the call ``failed``, a skip (``pytest.skip``, ``skipif``, an xfail) ``skipped``, and an error in
teardown turns an otherwise passed or skipped test into ``error``. pytest-rerunfailures logs every
attempt but the last with the outcome ``rerun`` and numbers them in ``report.rerun`` (0-based);
they become attempts 1..n-1 and the final one attempt n.

This runs on the pytest main thread for every report, so the common case (a passing test) does as
little as possible; ids and timestamps are filled in by the sender thread.
"""

from __future__ import annotations

import hashlib
from typing import Any

# Bounds of the ingest API (atas.common.schemas): longer values would refuse the whole batch.
LABEL_MAX = 1024
MESSAGE_MAX = 8 * 1024  # well under the API's 64 KiB: the message is a summary; the trace has the rest
TRACE_MAX = 64 * 1024  # the end of a long trace is where the error is, so the end is kept

# Markers that are pytest's machinery, not labels people filter by.
_MECHANICS = frozenset({"parametrize", "usefixtures", "filterwarnings"})


def marker_names(item: Any) -> list[str]:
    """The names of the markers on ``item`` (its own, its class's and module's), in order, once."""
    seen: dict[str, None] = {}
    for mark in item.iter_markers():
        if mark.name not in _MECHANICS:
            seen.setdefault(mark.name, None)
    return list(seen)


def bounded_label(value: str) -> str:
    """A label within the API's bound; a longer one keeps its start plus a digest of the whole, so
    two long node ids that share a prefix stay two tests."""
    if len(value) <= LABEL_MAX:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    return value[:LABEL_MAX - 17] + "~" + digest


def split_nodeid(nodeid: str) -> tuple[str, str]:
    """``tests/a.py::TestX::test_y[1-a::b]`` → (suite ``tests/a.py::TestX``, name ``test_y[1-a::b]``).
    Parametrisation ids may contain ``::`` themselves, so the split ignores the bracketed part."""
    base, bracket, params = nodeid.partition("[")
    suite, sep, name = base.rpartition("::")
    if not sep:
        return base, nodeid
    return suite, name + bracket + params


def _text(longrepr: Any) -> str:
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, lineno, reason)
        return str(longrepr[2])
    return str(longrepr)


def _crash(report: Any) -> tuple[str | None, str | None, str]:
    """(error type, message, trace) of a failed report. The trace is pytest's long representation
    as printed; the message is its crash line (what pytest's short summary and --junitxml show),
    else the last line of the representation; the type comes from the crash location line
    (``tests/x.py:12: AssertionError``), pytest's last line."""
    text = _text(report.longrepr)
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if last.startswith("E "):  # pytest's marker of the exception line in a traceback
        last = last[1:].strip()
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or last or None
    error_type = None
    tail = last.rpartition(": ")[2] if ": " in last else ""
    if tail and all(part.isidentifier() for part in tail.split(".")):
        error_type = tail
    elif message:
        head = message.partition(":")[0].strip()
        if head and all(part.isidentifier() for part in head.split(".")) and head[0].isupper():
            error_type = head
    if len(text) > TRACE_MAX:
        text = "…" + text[-(TRACE_MAX - 1):]
    if message and len(message) > MESSAGE_MAX:
        message = message[:MESSAGE_MAX - 1] + "…"
    return error_type and bounded_label(error_type), message, text


def _skip_reason(report: Any) -> str | None:
    if hasattr(report, "wasxfail"):
        reason = report.wasxfail
        return f"xfail: {reason}" if reason else "xfail"
    reason = _text(report.longrepr)
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    return reason[:MESSAGE_MAX] or None


class _Attempt:
    __slots__ = ("setup", "call", "teardown", "duration", "start", "markers", "worker")

    def __init__(self) -> None:
        self.setup = self.call = self.teardown = None
        self.duration = 0.0
        self.start: float | None = None
        self.markers: list[str] | None = None
        self.worker: str | None = None


class ReportMapper:
    """Feed it every ``pytest_runtest_logreport`` report; it returns a result (a dict of the API's
    ``ResultIn`` fields, without ``id``) when an attempt of a test is complete, else None."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], _Attempt] = {}

    def add(self, report: Any) -> dict | None:
        attempt_no = getattr(report, "rerun", 0) + 1
        key = (report.nodeid, attempt_no)
        attempt = self._open.get(key)
        if attempt is None:
            attempt = self._open[key] = _Attempt()
        attempt.duration += report.duration or 0.0
        when = report.when
        if when == "setup":
            attempt.setup = report
            attempt.start = getattr(report, "start", None)
            attempt.markers = getattr(report, "atas_markers", None)
            attempt.worker = getattr(report, "worker_id", None)
            return None
        if when == "call":
            attempt.call = report
            return None
        # teardown ends the attempt; so does xdist's report for a crashed worker (when "???")
        attempt.teardown = report
        del self._open[key]
        return self._result(report.nodeid, attempt_no, attempt, report)

    def collect_error(self, report: Any) -> dict:
        """A module that failed to import or collect: pytest counts it as an error."""
        error_type, message, trace = _crash(report)
        suite, name = split_nodeid(report.nodeid or "<session>")
        return {"test_id": bounded_label(report.nodeid or "<session>"), "name": bounded_label(name),
                "suite": bounded_label(suite), "file": bounded_label(suite), "status": "error", "attempt": 1,
                "error_type": error_type, "error_message": message, "error_trace": trace,
                "attributes": {"phase": "collect"}}

    def _result(self, nodeid: str, attempt_no: int, a: _Attempt, last: Any) -> dict:
        attributes: dict[str, Any] = {}
        setup, call, teardown = a.setup, a.call, a.teardown
        failing = None  # the report whose error the result carries
        if setup is not None and setup.outcome != "passed":
            if setup.outcome == "skipped":
                status = "skipped"
                reason_report = setup
            else:  # failed, or "rerun"
                status, failing = "error", setup
                attributes["phase"] = "setup"
        elif call is not None:
            if call.outcome == "passed":
                status = "passed"
                if hasattr(call, "wasxfail"):
                    attributes["outcome"] = "xpassed"
            elif call.outcome == "skipped":
                status, reason_report = "skipped", call
            else:  # failed (a strict xpass too), or "rerun"
                status, failing = "failed", call
        else:  # no setup or call report: a crashed worker's report
            status, failing = ("failed", last) if last.outcome != "passed" else ("passed", None)
        if status == "skipped" and hasattr(reason_report, "wasxfail"):
            attributes["outcome"] = "xfailed"
        if teardown is not None and teardown.outcome not in ("passed", "skipped") and teardown.when == "teardown" \
                and status in ("passed", "skipped"):
            status, failing = "error", teardown
            attributes["phase"] = "teardown"
        suite, name = split_nodeid(nodeid)
        location = getattr(last, "location", None)
        result: dict[str, Any] = {
            "test_id": bounded_label(nodeid), "name": bounded_label(name), "suite": bounded_label(suite),
            "file": bounded_label(location[0]) if location else None, "status": status,
            "attempt": attempt_no, "duration_ms": int(a.duration * 1000),
        }
        if a.start is not None:
            result["started_at"] = a.start  # epoch seconds; the sender formats it
        if failing is not None:
            result["error_type"], result["error_message"], result["error_trace"] = _crash(failing)
        elif status == "skipped":
            result["error_message"] = _skip_reason(reason_report)
        if a.markers:
            attributes["markers"] = a.markers
        if a.worker:
            attributes["worker"] = a.worker
        result["attributes"] = attributes
        return result
