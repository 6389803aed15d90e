"""The chaos run's own logic, without I/O: its fault schedule is reproducible and covers every
kind, and its SSE check tells a gap or a duplicate from a resume that an explicit reset excuses."""

from bench.chaos.check import sse
from bench.chaos.faults import KINDS, schedule
from bench.chaos.monitor import Monitor


def _monitor(*log):
    m = Monitor("m", "http://127.0.0.1:1", "t", "p")
    m.seen.log = list(log)
    return m


def test_the_schedule_is_reproducible_covers_every_kind_and_ends_before_the_run():
    a, b = schedule(7, 120), schedule(7, 120)
    assert a == b and a != schedule(8, 120)
    assert {f.kind for f in a} == set(KINDS)
    assert all(0.1 * 120 <= f.at <= 0.7 * 120 for f in a)


def test_in_order_once_is_clean():
    m = _monitor(("event", "x", 1, "a"), ("event", "y", 1, "b"), ("event", "x", 2, "c"))
    assert sse([m], {"x": 2, "y": 1}) == {"sse_gaps": 0, "sse_duplicates": 0, "sse_resets": 0}


def test_a_skipped_seq_a_missing_tail_and_a_repeat_are_counted():
    m = _monitor(("event", "x", 1, "a"), ("event", "x", 3, "c"), ("event", "x", 3, "c"))
    assert sse([m], {"x": 4}) == {"sse_gaps": 2, "sse_duplicates": 1, "sse_resets": 0}


def test_an_explicit_reset_excuses_what_came_before_it():
    m = _monitor(("event", "x", 1, "a"), ("reset",), ("event", "x", 5, "e"), ("event", "x", 6, "f"))
    assert sse([m], {"x": 6, "y": 3}) == {"sse_gaps": 0, "sse_duplicates": 0, "sse_resets": 1}
