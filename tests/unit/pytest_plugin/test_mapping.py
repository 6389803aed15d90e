"""pytest reports → ATAS results, with pytest's own TestReport objects (no session needed)."""

from _pytest.reports import CollectReport, TestReport

from atas.pytest_plugin.mapping import LABEL_MAX, TRACE_MAX, ReportMapper, bounded_label, split_nodeid

NODE = "tests/test_cart.py::TestCart::test_total"


def _report(when, outcome, longrepr=None, nodeid=NODE, **extra):
    return TestReport(nodeid, ("tests/test_cart.py", 3, "TestCart.test_total"), {}, outcome, longrepr, when,
                      duration=0.25, start=1_700_000_000.0, stop=1_700_000_000.25, **extra)


def _run(mapper, *phases):
    results = [mapper.add(_report(*p[:3], **(p[3] if len(p) > 3 else {}))) for p in phases]
    assert results[:-1] == [None] * (len(results) - 1), "only the last phase completes an attempt"
    return results[-1]


FAILURE = "def test():\n>   assert total == 3\nE   assert 2 == 3\n\ntests/test_cart.py:5: AssertionError"


def test_a_passing_test_with_its_duration_start_and_names():
    r = _run(ReportMapper(), ("setup", "passed"), ("call", "passed"), ("teardown", "passed"))
    assert r["status"] == "passed" and r["attempt"] == 1 and r["duration_ms"] == 750
    assert (r["test_id"], r["suite"], r["name"], r["file"]) == (
        NODE, "tests/test_cart.py::TestCart", "test_total", "tests/test_cart.py")
    assert r["started_at"] == 1_700_000_000.0 and "error_message" not in r


def test_a_failure_carries_the_trace_and_its_crash_line():
    r = _run(ReportMapper(), ("setup", "passed"), ("call", "failed", FAILURE), ("teardown", "passed"))
    assert r["status"] == "failed" and r["error_type"] == "AssertionError"
    assert r["error_trace"] == FAILURE and r["error_message"] == "tests/test_cart.py:5: AssertionError"


def test_an_error_in_teardown_turns_a_pass_into_an_error_but_keeps_a_failure():
    teardown = "E   OSError: disk full\n\ntests/conftest.py:9: OSError"
    r = _run(ReportMapper(), ("setup", "passed"), ("call", "passed"), ("teardown", "failed", teardown))
    assert (r["status"], r["error_type"], r["attributes"]["phase"]) == ("error", "OSError", "teardown")
    r = _run(ReportMapper(), ("setup", "passed"), ("call", "failed", FAILURE), ("teardown", "failed", teardown))
    assert (r["status"], r["error_type"]) == ("failed", "AssertionError")


def test_a_skip_keeps_its_reason_without_pytest_prefix():
    r = _run(ReportMapper(), ("setup", "skipped", ("tests/test_cart.py", 3, "Skipped: needs a printer")),
             ("teardown", "passed"))
    assert (r["status"], r["error_message"]) == ("skipped", "needs a printer")


def test_rerun_attempts_are_numbered_from_one():
    mapper = ReportMapper()
    first = _run(mapper, ("setup", "passed", None, {"rerun": 0}), ("call", "rerun", FAILURE, {"rerun": 0}),
                 ("teardown", "passed", None, {"rerun": 0}))
    second = _run(mapper, ("setup", "rerun", FAILURE, {"rerun": 1}), ("teardown", "passed", None, {"rerun": 1}))
    third = _run(mapper, ("setup", "passed", None, {"rerun": 2}), ("call", "passed", None, {"rerun": 2}),
                 ("teardown", "passed", None, {"rerun": 2}))
    assert [(r["attempt"], r["status"]) for r in (first, second, third)] == [(1, "failed"), (2, "error"), (3, "passed")]


def test_a_crashed_xdist_worker_fails_the_test_it_was_running():
    crash = "worker 'gw1' crashed while running 'tests/test_cart.py::TestCart::test_total'"
    r = ReportMapper().add(_report("???", "failed", crash))
    assert r["status"] == "failed" and r["error_message"] == crash


def test_markers_and_worker_come_from_the_setup_report():
    r = _run(ReportMapper(), ("setup", "passed", None, {"atas_markers": ["slow"], "worker_id": "gw3"}),
             ("call", "passed"), ("teardown", "passed"))
    assert r["attributes"] == {"markers": ["slow"], "worker": "gw3"}


def test_a_collection_error_is_an_error_of_its_module():
    report = CollectReport("tests/test_broken.py", "failed", "E   ImportError: no module named cart\n", [])
    r = ReportMapper().collect_error(report)
    assert (r["test_id"], r["status"], r["error_type"]) == ("tests/test_broken.py", "error", "ImportError")


def test_long_values_stay_within_the_api_bounds_and_distinct():
    a, b = "t.py::test[" + "x" * 2000 + "a]", "t.py::test[" + "x" * 2000 + "b]"
    assert len(bounded_label(a)) == LABEL_MAX and bounded_label(a) != bounded_label(b)
    trace = "start\n" + "line\n" * 50_000 + "tests/x.py:1: ValueError"
    r = _run(ReportMapper(), ("setup", "passed"), ("call", "failed", trace), ("teardown", "passed"))
    assert len(r["error_trace"]) == TRACE_MAX and r["error_trace"].endswith("ValueError")


def test_parametrisation_ids_with_colons_stay_in_the_name():
    assert split_nodeid("a.py::TestX::test_y[1-a::b]") == ("a.py::TestX", "test_y[1-a::b]")
    assert split_nodeid("a.py") == ("a.py", "a.py")
