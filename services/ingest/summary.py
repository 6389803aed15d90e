"""The ``tests`` summary of an execution: distinct tests by the status of their final attempt.

The attempt counters (``counts``) only ever grow by what a batch stores. The tests summary does
not: a new attempt of a known test replaces that test's final status (failed → passed on a retry),
and an attempt that arrives late with a *lower* number than one already stored changes nothing
but, perhaps, whether the test is flaky. So the writer computes, for the tests a batch touched,
their summary before and after the batch from their stored attempts, and adds the difference
(pure functions here; the SQL is in :mod:`atas.ingest.writer`).
"""

from __future__ import annotations

from collections.abc import Iterable

# Keys of a summary delta; ``error`` as in the API (the column is ``tests_errored``).
TEST_KEYS: tuple[str, ...] = ("total", "passed", "failed", "skipped", "error", "flaky")

Attempt = tuple[str, int, str]  # (test_id, attempt, status)


def final_outcome(attempts: dict[int, str]) -> tuple[str, bool] | None:
    """(status of the highest attempt, flaky) of one test's attempts; None without any.

    Flaky: the final attempt passed after an earlier (lower-numbered) one failed or errored."""
    if not attempts:
        return None
    last = max(attempts)
    status = attempts[last]
    flaky = status == "passed" and any(s in ("failed", "error") for a, s in attempts.items() if a < last)
    return status, flaky


def tests_delta(stored: Iterable[Attempt], inserted: Iterable[Attempt]) -> dict[str, int]:
    """How an execution's tests summary changes when the ``inserted`` attempts were stored.

    ``stored``: every stored attempt of the tests the batch touched, the inserted ones included
    (as read after the insert). A test whose earlier attempts are not in ``stored`` is counted as
    new, so ``stored`` must be complete for each test it names."""
    new_keys = {(t, a) for t, a, _ in inserted}
    by_test: dict[str, list[tuple[int, str]]] = {}
    for test_id, attempt, status in stored:
        attempts = by_test.get(test_id)
        if attempts is None:
            by_test[test_id] = [(attempt, status)]
        else:
            attempts.append((attempt, status))
    delta = dict.fromkeys(TEST_KEYS, 0)
    for test_id, attempts in by_test.items():
        if len(attempts) == 1:  # most tests of a batch: one attempt, new or untouched
            attempt, status = attempts[0]
            if (test_id, attempt) in new_keys:
                delta["total"] += 1
                delta[status] += 1
            continue
        after = dict(attempts)
        before = {a: st for a, st in attempts if (test_id, a) not in new_keys}
        if len(before) == len(after):
            continue  # not touched by the batch
        for sign, outcome in ((-1, final_outcome(before)), (1, final_outcome(after))):
            if outcome is not None:
                status, flaky = outcome
                delta["total"] += sign
                delta[status] += sign
                delta["flaky"] += sign * flaky
    return delta


def only_new_tests(max_attempt_stored: int, top_inserted: int) -> bool:
    """True when every inserted attempt is a test's first (the highest inserted is 1) and the
    execution never stored a retry: then no inserted test was stored before (its attempt 1 would
    have been a duplicate), and the batch's tests summary is its own, with no read of earlier
    attempts."""
    return max_attempt_stored <= 1 and top_inserted <= 1
