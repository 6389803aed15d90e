"""The synthetic harness produces data with the shape dashboards need to show something real."""

import random

from atas.cli.load import make_suite, run_execution_results


def test_suite_is_reproducible_with_a_seed():
    assert make_suite(50, random.Random(7)) == make_suite(50, random.Random(7))


def test_failed_attempts_are_retried_and_attempts_are_consecutive():
    suite = make_suite(400, random.Random(1))
    results = run_execution_results(suite, random.Random(2), retries=2, broken_branch=False)
    by_test: dict[str, list] = {}
    for r in results:
        by_test.setdefault(r.test_id, []).append(r)
    assert set(by_test) == {t.test_id for t in suite}  # every test reported
    for attempts in by_test.values():
        assert [a.attempt for a in attempts] == list(range(1, len(attempts) + 1))
        assert len(attempts) <= 3
        # only the last attempt may pass; every earlier one failed or errored
        assert all(a.status in ("failed", "error") for a in attempts[:-1])


def test_a_run_has_passes_failures_skips_and_flaky_recoveries():
    suite = make_suite(1000, random.Random(3))
    results = run_execution_results(suite, random.Random(4), retries=2, broken_branch=False)
    statuses = {r.status for r in results}
    assert {"passed", "failed", "skipped"} <= statuses
    recovered = {r.test_id for r in results if r.attempt > 1 and r.status == "passed"}
    assert recovered, "some flaky tests must pass on a retry"
    failed = [r for r in results if r.status == "failed"]
    assert all(r.error_type and r.error_message for r in failed)
    assert 0.6 < sum(r.status == "passed" for r in results) / len(results) < 0.99
