"""JUnit XML → results, on reports written by the real tools (see tests/fixtures/junit/README.md)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from atas.common.errors import ApiError
from atas.ingest.junit import parse_junit, report_window

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "junit"


def _parse(name: str):
    return parse_junit((FIXTURES / name).read_bytes())


def _by_id(report):
    return {(r.test_id, r.attempt): r for r in report.results}


def test_pytest_report():
    report = _parse("pytest.xml")
    assert report.name == "pytest tests" and report.started_at is not None
    assert Counter(r.status for r in report.results) == {"passed": 4, "failed": 2, "error": 1, "skipped": 2}
    results = _by_id(report)
    failed = results[("sample_suite::test_fails", 1)]
    assert failed.error_message.startswith("AssertionError: lists differ")
    assert "sample_suite.py:9: AssertionError" in failed.error_trace
    setup_error = results[("sample_suite::test_errors_in_setup", 1)]
    assert setup_error.status == "error" and "fixture could not connect" in setup_error.error_message
    assert results[("sample_suite::test_xfail", 1)].error_type == "pytest.xfail"
    assert results[("sample_suite::test_param[2]", 1)].status == "failed"
    assert ("sample_suite.TestGroup::test_in_class", 1) in results


def test_pytest_rerunfailures_report_keeps_reruns_as_the_failures_they_were():
    report = _parse("pytest-rerunfailures.xml")
    results = _by_id(report)
    # a flaky test: the rerun attempt (written without an outcome) did not pass, the second did
    assert results[("rerun_suite::test_flaky_network", 1)].status == "failed"
    assert "rerun" in results[("rerun_suite::test_flaky_network", 1)].error_message
    assert results[("rerun_suite::test_flaky_network", 2)].status == "passed"
    # failing on both attempts: the rerun takes the final status, the final keeps its own message
    assert results[("rerun_suite::test_errors_in_setup", 1)].status == "error"
    assert "fixture could not connect" in results[("rerun_suite::test_errors_in_setup", 2)].error_message
    assert results[("rerun_suite::test_fails", 1)].status == results[("rerun_suite::test_fails", 2)].status == "failed"
    # tests that ran once are untouched
    assert results[("rerun_suite::test_passes", 1)].status == "passed"
    assert ("rerun_suite::test_passes", 2) not in results
    assert Counter(r.status for r in report.results) == {"passed": 7, "failed": 8, "error": 2, "skipped": 2}


def test_a_passing_test_repeated_in_another_suite_stays_a_pass():
    report = parse_junit(b"""<testsuites>
      <testsuite name="unit"><testcase classname="m" name="t"/></testsuite>
      <testsuite name="again"><testcase classname="m" name="t"><failure message="x"/></testcase></testsuite>
    </testsuites>""")
    assert [(r.attempt, r.status) for r in report.results] == [(1, "passed"), (2, "failed")]


def test_surefire_report_keeps_reruns_as_attempts():
    report = _parse("surefire.xml")
    results = _by_id(report)
    base = "com.example.CalculatorTest::"
    # a flaky test: failed once, then passed
    assert results[(base + "flakyPassesOnSecondRun", 1)].status == "failed"
    assert results[(base + "flakyPassesOnSecondRun", 2)].status == "passed"
    # failing tests rerun twice: three attempts each, with the stack trace of each rerun
    assert [results[(base + "subtractsWrongly", a)].status for a in (1, 2, 3)] == ["failed"] * 3
    assert [results[(base + "throwsUnexpectedly", a)].status for a in (1, 2, 3)] == ["error"] * 3
    rerun = results[(base + "throwsUnexpectedly", 3)]
    assert rerun.error_type == "java.lang.IllegalStateException"
    assert rerun.error_trace.startswith("java.lang.IllegalStateException: database not reachable")
    disabled = results[(base + "disabled", 1)]
    assert disabled.status == "skipped" and disabled.error_message == "waiting for JIRA-42"
    assert results[(base + "positive(int)[3]", 1)].status == "passed"
    assert results[(base + "adds", 1)].duration_ms == 2


def test_jest_junit_report():
    report = _parse("jest.xml")
    results = _by_id(report)
    assert len(results) == 8
    failed = results[("cart computes the total with tax", 1)]
    assert failed.status == "failed" and failed.file == "__tests__/cart.test.js"
    assert failed.error_message == "Error: expect(received).toBeCloseTo(expected)"  # first trace line
    assert results[("cart applies a coupon", 1)].status == "skipped"
    assert report.duration_ms == 637


def test_playwright_report():
    report = _parse("playwright.xml")
    results = _by_id(report)
    assert Counter(r.status for r in report.results) == {"passed": 2, "failed": 1, "skipped": 1}
    failed = results[("api.spec.js::orders api › rejects a bad token", 1)]
    assert failed.file == "api.spec.js" and "Retry #1" in failed.error_trace
    assert report.started_at.tzinfo is not None


@pytest.mark.parametrize("name", ["bomb.xml", "xxe.xml"])
def test_entity_declarations_are_refused(name):
    with pytest.raises(ApiError) as info:
        _parse(name)
    assert info.value.status == 400 and info.value.code == "forbidden_xml"


def test_malformed_xml_says_where():
    with pytest.raises(ApiError) as info:
        parse_junit(b"<testsuites>\n  <testsuite name='s'>\n    <testcase name='a'>\n</testsuites>")
    assert info.value.status == 400 and info.value.details["line"] == 4
    assert "line 4" in info.value.message


def test_other_xml_is_not_a_report():
    with pytest.raises(ApiError) as info:
        parse_junit(b"<html><body/></html>")
    assert info.value.status == 422


def test_a_repeated_test_becomes_the_next_attempt():
    xml = b"""<testsuites><testsuite name="a"><testcase classname="c" name="t"><failure message="x"/></testcase>
              </testsuite><testsuite name="b"><testcase classname="c" name="t"/></testsuite></testsuites>"""
    assert [(r.attempt, r.status) for r in parse_junit(xml).results] == [(1, "failed"), (2, "passed")]


def test_the_same_test_on_different_hosts_is_two_tests_not_a_retry():
    """Playwright writes one suite per file and project (hostname): a test failing only in chromium
    must fail the run, not read as a flaky retry that webkit passed."""
    xml = b"""<testsuites>
      <testsuite name="a.spec.ts" hostname="chromium"><testcase classname="a.spec.ts" name="login"><failure message="x"/></testcase></testsuite>
      <testsuite name="a.spec.ts" hostname="webkit"><testcase classname="a.spec.ts" name="login"/></testsuite>
      <testsuite name="b.spec.ts" hostname="webkit"><testcase classname="b.spec.ts" name="only here"/></testsuite>
    </testsuites>"""
    got = [(r.test_id, r.attempt, r.status) for r in parse_junit(xml).results]
    assert got == [("a.spec.ts::login [chromium]", 1, "failed"), ("a.spec.ts::login [webkit]", 1, "passed"),
                   ("b.spec.ts::only here", 1, "passed")]


def test_deeply_nested_suites_and_absurd_times_do_not_break_the_import():
    depth = 5000
    xml = (b"<testsuites>" + b'<testsuite name="s" time="2000000">' * depth
           + b'<testcase classname="c" name="t" time="1"/>' + b"</testsuite>" * depth + b"</testsuites>")
    report = parse_junit(xml)
    assert [r.test_id for r in report.results] == ["c::t"]
    start, end = report_window(report, datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert end - start == timedelta(days=30)  # the suites' summed times clipped, not overflowed


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59", "0001-01-01T00:00:00+01:00", "1969-12-31T00:00:00Z"])
def test_a_timestamp_no_run_can_have_is_ignored(stamp):
    xml = f'<testsuite name="s" timestamp="{stamp}" time="10"><testcase name="t"/></testsuite>'.encode()
    report = parse_junit(xml)
    assert report.started_at is None
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert report_window(report, now) == (now - timedelta(seconds=10), now)


def test_a_long_multibyte_test_id_is_clipped_to_the_key_budget():
    name = "測" * 1000  # 3,000 bytes
    report = parse_junit(f'<testsuite name="s"><testcase name="{name}"/></testsuite>'.encode())
    (result,) = report.results
    assert len(result.test_id.encode()) <= 1024 and name.startswith(result.test_id)


def test_control_characters_in_a_report_name_become_spaces_in_the_test_id():
    """The JSON API refuses a test id with control characters; a report (whose XML may carry a
    line break or tab in a name) imports with them replaced instead."""
    report = parse_junit(b'<testsuite name="s"><testcase classname="pkg.Case" name="test&#10;odd&#9;name"/></testsuite>')
    (result,) = report.results
    assert result.test_id == "pkg.Case::test odd name"
