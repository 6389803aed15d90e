"""JUnit XML reports → results: the dialects of Maven Surefire, pytest ``--junitxml``, jest-junit
and Playwright's junit reporter (they share ``testsuites/testsuite/testcase``).

Parsing goes through defusedxml: documents that declare entities (billion laughs, external
entities / XXE) are refused before anything is expanded or fetched. A parse error is reported with
its line and column.

Mapping, per ``<testcase>``:

* ``test_id`` = ``classname::name`` (``name`` alone without a classname, or when both are equal as
  with jest-junit); ``suite`` = the enclosing ``<testsuite name>``; ``file`` from the ``file``
  attribute, or the classname when it is a spec file (Playwright);
* status: ``<failure>`` → failed, ``<error>`` → error, ``<skipped>`` → skipped, else passed; the
  element's ``type``/``message`` and text become the error type, message and trace;
* Surefire reruns are kept as attempts: ``<flakyFailure>``/``<flakyError>`` are failed attempts
  before the final pass, ``<rerunFailure>``/``<rerunError>`` failed attempts after the first;
* the same ``test_id`` seen again later in the file (rerun plugins, several suites) becomes the
  next attempt rather than being dropped as a duplicate — unless the suites name different hosts
  (Playwright writes one suite per file and *project*, e.g. ``hostname="chromium"``): those are
  different tests, and their ids are qualified with the host, ``classname::name [chromium]``;
* pytest-rerunfailures: pytest's junitxml writes a rerun attempt as a ``<testcase>`` *without* an
  outcome element, followed by the next attempt under the same name in the same suite. Such an
  outcome-less testcase that its own suite repeats was not a pass (rerun plugins rerun only what
  did not pass): it becomes an attempt with the final attempt's status when that failed or
  errored, else ``failed``, and a message saying the report did not record it.

Bounds: ids are clipped to 1,024 UTF-8 bytes; implausible times (negative, NaN, over ~23 days per
element, timestamps outside 1970..2199) are ignored rather than refused; suites may nest as deep
as the XML parser allows (no recursion here).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import msgspec
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from atas.common.errors import ApiError
from atas.common.schemas import CONTROL_CHARS, EARLIEST, KEY_BYTES, LATEST, ResultIn

_MAX_LABEL = 1024
_MAX_MESSAGE = 65_536
_MAX_TRACE = 1_048_576
# Playwright's classname is the spec file: recognise it as the result's file.
_SOURCE_SUFFIXES = (".js", ".mjs", ".cjs", ".jsx", ".ts", ".mts", ".tsx", ".py")


class Report(msgspec.Struct, kw_only=True):
    """A parsed report: what becomes one execution."""

    name: str | None
    started_at: datetime | None  # earliest suite timestamp, when the tool wrote one
    duration_ms: int  # wall time of the report (root `time`, else the suites' sum)
    results: list[ResultIn]
    # (test_id, attempt, path) of files the report references with `[[ATTACHMENT|path]]` lines in a
    # case's system-out/system-err (Jenkins, GitLab, Playwright): `atas import junit
    # --attachments-dir` uploads them and links them to the test's final attempt.
    attachments: list[tuple[str, int, str]] = []


def _parse_xml(data: bytes) -> ET.Element:
    try:
        return fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise ApiError(400, "forbidden_xml",
                       f"the report was refused: {exc}; JUnit reports never need entity declarations "
                       "(this protects against entity expansion and external entities)") from None
    except ET.ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise ApiError(400, "malformed_xml", f"malformed XML at line {line}, column {column}: {exc}",
                       details={"line": line, "column": column}) from None


def _seconds_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        seconds = float(value.replace(",", ""))  # old Surefire writes 1,234.5
    except ValueError:
        return None
    if seconds != seconds or seconds < 0 or seconds > 2_000_000:  # NaN, negative, or absurd
        return None
    return int(round(seconds * 1000))


def _timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    # Surefire and jest-junit write local time without an offset; UTC is the only safe reading.
    ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
    try:
        return ts if EARLIEST <= ts < LATEST else None  # a broken clock: the import time stands in
    except OverflowError:  # comparing needs UTC, which years 1 and 9999 with an offset cannot reach
        return None


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value[:limit] if value else None


def _label(value: str, limit: int = _MAX_LABEL) -> str:
    return value[:limit] if value else "unnamed"


def _test_id(value: str) -> str:
    """An id within the index-key budget (1,024 characters and 1,024 UTF-8 bytes), printable: a
    report's line breaks or tabs in a name become spaces (the JSON API refuses them instead)."""
    value = _label(CONTROL_CHARS.sub(" ", value))
    limit = KEY_BYTES["test_id"]
    if len(value) * 4 > limit and len(value.encode()) > limit:
        value = value.encode()[:limit].decode(errors="ignore")
    return value


_OUTCOMES = {"failure": "failed", "error": "error", "skipped": "skipped"}
_EARLIER = {"flakyFailure": "failed", "flakyError": "error"}   # failed attempts before a final pass
_LATER = {"rerunFailure": "failed", "rerunError": "error"}     # failed attempts after the first


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _error_fields(el: ET.Element) -> dict:
    text = el.text or ""
    stack = el.find("stackTrace")  # Surefire's flaky/rerun elements nest it
    if stack is not None and stack.text:
        text = stack.text
    trace = _clip(text, _MAX_TRACE)
    message = _clip(el.get("message"), _MAX_MESSAGE)
    if message is None and trace:  # jest-junit writes no message attribute: use the trace's first line
        message = _clip(trace.splitlines()[0], _MAX_MESSAGE)
    return {"error_type": _clip(el.get("type"), _MAX_LABEL), "error_message": message, "error_trace": trace}


def _base_id(case: ET.Element) -> str:
    classname = (case.get("classname") or "").strip()
    name = (case.get("name") or "").strip()
    # jest-junit's default classname repeats the full title; don't double it in the id.
    return f"{classname}::{name}" if classname and classname != name else name or classname


def _testcase(case: ET.Element, test_id: str, suite: str | None, attempts: dict[str, int]) -> list[ResultIn]:
    classname = (case.get("classname") or "").strip()
    name = (case.get("name") or "").strip()
    test_id = _test_id(test_id)
    file = case.get("file") or (classname if classname.endswith(_SOURCE_SUFFIXES) else None)
    common = dict(test_id=test_id, name=_label(name or test_id), suite=_clip(suite, _MAX_LABEL),
                  file=_clip(file, _MAX_LABEL))
    duration = _seconds_ms(case.get("time"))
    status, final_error, earlier, later = "passed", {}, [], []
    for child in case:
        tag = _local(child.tag)
        if tag in _OUTCOMES and status == "passed":
            status = _OUTCOMES[tag]
            final_error = _error_fields(child)
        elif tag in _EARLIER:
            earlier.append((_EARLIER[tag], _error_fields(child)))
        elif tag in _LATER:
            later.append((_LATER[tag], _error_fields(child)))
    out: list[ResultIn] = []

    def add(st: str, fields: dict, dur: int | None) -> None:
        attempt = attempts.get(test_id, 0) + 1
        attempts[test_id] = attempt
        out.append(ResultIn(status=st, attempt=attempt, duration_ms=dur, **common, **fields))

    for st, fields in earlier:
        add(st, fields, None)
    add(status, final_error, duration)
    for st, fields in later:
        add(st, fields, None)
    return out


_RECORDED = {*_OUTCOMES, *_EARLIER, *_LATER}
_RERUN_MESSAGE = ("rerun: the report repeats this test without recording why this attempt did not pass "
                  "(pytest-rerunfailures)")


def _mark_reruns(results: list[ResultIn], reruns: list[int]) -> None:
    """Give the outcome-less attempts that a rerun followed a status that is not a pass."""
    if not reruns:
        return
    final = {r.test_id: r.status for r in results}  # the highest attempt comes last
    for i in reruns:
        r = results[i]
        status = final[r.test_id] if final[r.test_id] in ("failed", "error") else "failed"
        results[i] = msgspec.structs.replace(r, status=status, error_message=_RERUN_MESSAGE)


def parse_junit(data: bytes) -> Report:
    """Parse a JUnit XML document; raises ApiError 400 (refused or malformed) or 422 (not JUnit)."""
    root = _parse_xml(data)
    tag = _local(root.tag)
    if tag not in ("testsuites", "testsuite"):
        raise ApiError(422, "not_junit", f"not a JUnit report: the root element is <{tag}>, expected "
                                         "<testsuites> or <testsuite>")
    stamps: list[datetime] = []
    suite_ms = 0
    cases: list[tuple[ET.Element, str, str | None, str | None, int]] = []  # case, base id, suite, host, suite #

    # Suites in document order, depth first, without recursion (nesting depth is the sender's).
    stack = [(root, None)] if tag == "testsuite" else [
        (child, None) for child in reversed(list(root)) if _local(child.tag) == "testsuite"]
    while stack:
        suite_el, inherited_host = stack.pop()
        stamp = _timestamp(suite_el.get("timestamp"))
        if stamp is not None:
            stamps.append(stamp)
        suite_ms += _seconds_ms(suite_el.get("time")) or 0
        suite_name = suite_el.get("name")
        host = (suite_el.get("hostname") or "").strip() or inherited_host
        nested = []
        for child in suite_el:
            ctag = _local(child.tag)
            if ctag == "testcase":
                cases.append((child, _base_id(child), suite_name, host, id(suite_el)))
            elif ctag == "testsuite":
                nested.append((child, host))
        stack.extend(reversed(nested))
    if not cases:
        raise ApiError(422, "empty_report", "the report contains no <testcase> elements")
    hosts: dict[str, set[str | None]] = {}
    for _case, base, _suite, host, _ in cases:
        hosts.setdefault(base, set()).add(host)
    attempts: dict[str, int] = {}
    results: list[ResultIn] = []
    # (test_id, suite) → index of its latest attempt when that testcase had no outcome element.
    bare: dict[tuple[str, int], int] = {}
    reruns: list[int] = []
    attachments: list[tuple[str, int, str]] = []
    for case, base, suite_name, host, suite_key in cases:
        test_id = f"{base} [{host}]" if host and len(hosts[base]) > 1 else base
        first = len(results)
        results.extend(_testcase(case, test_id, suite_name, attempts))
        final = results[-1]
        attachments.extend((final.test_id, final.attempt, path) for path in _attachment_paths(case))
        key = (results[first].test_id, suite_key)
        if key in bare:
            reruns.append(bare.pop(key))
        if not any(_local(child.tag) in _RECORDED for child in case):
            bare[key] = len(results) - 1
    _mark_reruns(results, reruns)
    total_ms = _seconds_ms(root.get("time")) if tag == "testsuites" else None
    name = (root.get("name") or "").strip() or None
    return Report(name=name, started_at=min(stamps) if stamps else None,
                  duration_ms=total_ms if total_ms is not None else suite_ms, results=results,
                  attachments=attachments)


_ATTACHMENT_LINE = re.compile(r"\[\[ATTACHMENT\|([^\]\r\n]+)\]\]")


def _attachment_paths(case: ET.Element) -> list[str]:
    paths: list[str] = []
    for child in case:
        if _local(child.tag) in ("system-out", "system-err") and child.text and "[[ATTACHMENT|" in child.text:
            paths.extend(p.strip() for p in _ATTACHMENT_LINE.findall(child.text) if p.strip())
    return list(dict.fromkeys(paths))


# A report longer than this is not a test run's wall time (suites' times summed without a root
# time can add up to anything): it is clipped.
_MAX_SPAN = timedelta(days=30)


def report_window(report: Report, now: datetime) -> tuple[datetime, datetime]:
    """(started_at, finished_at) of the execution a report becomes."""
    span = min(timedelta(milliseconds=report.duration_ms), _MAX_SPAN)
    if report.started_at is None:
        return now - span, now
    return report.started_at, report.started_at + span
