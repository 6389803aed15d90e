"""The tests-summary arithmetic of a batch (atas.ingest.summary), without a database."""

from __future__ import annotations

import random

from atas.ingest import summary  # not its names: pytest would collect `tests_delta` as a test

final_outcome, only_new_tests, delta_of = summary.final_outcome, summary.only_new_tests, summary.tests_delta


def _summary(attempts: list[tuple[str, int, str]]) -> dict[str, int]:
    by_test: dict[str, dict[int, str]] = {}
    for t, a, s in attempts:
        by_test.setdefault(t, {})[a] = s
    out = dict.fromkeys(("total", "passed", "failed", "skipped", "error", "flaky"), 0)
    for attempts_of in by_test.values():
        status, flaky = final_outcome(attempts_of)
        out["total"] += 1
        out[status] += 1
        out["flaky"] += flaky
    return out


def test_the_highest_attempt_decides_and_flaky_needs_an_earlier_failure():
    assert final_outcome({}) is None
    assert final_outcome({1: "failed", 2: "passed"}) == ("passed", True)
    assert final_outcome({1: "error", 3: "passed", 2: "skipped"}) == ("passed", True)
    assert final_outcome({1: "passed", 2: "failed"}) == ("failed", False)
    assert final_outcome({2: "passed", 3: "failed"}) == ("failed", False)
    assert final_outcome({1: "skipped", 2: "passed"}) == ("passed", False)


def test_deltas_over_batches_in_any_order_add_up_to_the_summary_of_everything():
    rng = random.Random(3)
    for _ in range(200):
        attempts = [(f"t{t}", a, rng.choice(("passed", "failed", "error", "skipped")))
                    for t in range(5) for a in range(1, rng.randint(1, 4) + 1)]
        rng.shuffle(attempts)
        stored: list = []
        total = dict.fromkeys(("total", "passed", "failed", "skipped", "error", "flaky"), 0)
        for batch in (attempts[i:i + 3] for i in range(0, len(attempts), 3)):
            stored.extend(batch)
            touched = {t for t, _, _ in batch}
            delta = delta_of([x for x in stored if x[0] in touched], batch)
            for k, v in delta.items():
                total[k] += v
        assert total == _summary(attempts)


def test_only_a_first_attempt_to_an_execution_without_retries_skips_the_read():
    firsts = [("a", 1, "passed"), ("b", 1, "failed")]
    assert only_new_tests(1, 1)
    assert not only_new_tests(2, 1)  # "a" may have a stored attempt 2
    assert not only_new_tests(1, 2)  # the batch holds a retry
    assert delta_of(firsts, firsts) == {"total": 2, "passed": 1, "failed": 1, "skipped": 0, "error": 0,
                                           "flaky": 0}
