"""Pure parts of the query service: cursors, ranges, event → key mapping, the in-process cache."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone

import pytest

from atas.common.bus import Message
from atas.common.config import ConfigError
from atas.common.errors import ApiError
from atas.common.events import encode_event, new_event
from atas.query import cache as c
from atas.query.config import QueryConfig, load_config
from atas.query.invalidation import stale_keys
from atas.query.routes import RangeParams, day_range, decode_cursor, encode_cursor, resolve_range


def test_cursor_round_trip_and_rejects_foreign_or_garbled_cursors():
    t = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    cursor = encode_cursor("ex", t.isoformat(), "0b9c1c1e-6a3c-4e9d-8a44-1c1f8a1d2e3f")
    import uuid

    assert decode_cursor(cursor, "ex", (datetime, uuid.UUID)) == (t, "0b9c1c1e-6a3c-4e9d-8a44-1c1f8a1d2e3f")
    for bad in ("", "%%%", "bm90IGpzb24", encode_cursor("rs", "a", 1), encode_cursor("ex", "yesterday", "x"),
                encode_cursor("ex", t.isoformat())):
        with pytest.raises(ApiError) as info:
            decode_cursor(bad, "ex", (datetime, uuid.UUID))
        assert info.value.status == 400 and info.value.field == "cursor"


def test_ranges_default_validate_and_widen_to_days():
    config = QueryConfig(max_range_days=30, default_range_days=7)
    start, end = resolve_range(RangeParams(project="p"), config)
    assert end - start == timedelta(days=7) and end.second == 0 and end.microsecond == 0
    start, end = resolve_range(RangeParams(project="p", from_="2026-01-01", to="2026-01-02T06:00:00+02:00"), config)
    assert (start, end) == (datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, 4, tzinfo=timezone.utc))
    assert day_range(start, end) == (date(2026, 1, 1), date(2026, 1, 3))
    assert day_range(start, datetime(2026, 1, 2, tzinfo=timezone.utc)) == (date(2026, 1, 1), date(2026, 1, 2))
    for params, field in ((RangeParams(project="p", from_="2026-02-01", to="2026-01-01"), "from"),
                          (RangeParams(project="p", from_="2025-01-01", to="2026-01-01"), "to"),
                          (RangeParams(project="p", to="soon"), "to")):
        with pytest.raises(ApiError) as info:
            resolve_range(params, config)
        assert info.value.status == 400 and info.value.field == field


def test_config_names_the_variable():
    assert load_config({}) == QueryConfig()
    with pytest.raises(ConfigError) as info:
        load_config({"QUERY_MAX_RANGE_DAYS": "zero", "QUERY_DEFAULT_PAGE_SIZE": "500"})
    text = str(info.value)
    assert "QUERY_MAX_RANGE_DAYS" in text and "QUERY_DEFAULT_PAGE_SIZE" in text


def test_events_name_the_status_and_recent_entries_they_make_stale():
    event = new_event("results.recorded", project="demo", execution_id="e1", seq=2, data={})
    messages = [Message(b"e1", encode_event(event), 0, 1), Message(b"x", b"not json", 0, 2),
                Message(b"e1", encode_event(event), 0, 3), Message(b"x", None, 0, 4)]  # a tombstone
    keys, bad = stale_keys(messages)
    assert bad == 2
    assert keys == [c.status_key("demo", "e1"), c.recent_key("demo")]


async def test_single_flight_runs_one_aggregation_for_concurrent_misses():
    cache = c.ResponseCache(c.MemoryCacheEngine())
    entry = c.overview_entry("demo", "k", 60)
    gate = asyncio.Event()

    async def compute() -> bytes:
        await gate.wait()
        return b'{"n":1}'

    tasks = [asyncio.create_task(cache.fetch(entry, compute)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    got = await asyncio.gather(*tasks)
    assert {g.body for g in got} == {b'{"n":1}'} and cache.aggregations == {"overview": 1}
    hit = await cache.fetch(entry, compute)
    assert hit.outcome == "hit" and hit.etag == got[0].etag


async def test_a_fill_racing_an_invalidation_does_not_store_the_stale_answer():
    engine = c.MemoryCacheEngine()
    cache = c.ResponseCache(engine)
    entry = c.status_entry("demo", "e1", 60)

    async def compute() -> bytes:
        await cache.invalidate([entry.key])  # the event arrives while the database is being read
        return b'{"status":"running"}'

    first = await cache.fetch(entry, compute)
    assert first.outcome == "miss"
    assert await engine.get(entry) is None  # not stored: the next read goes to the database again


async def test_recent_pages_are_dropped_together():
    engine = c.MemoryCacheEngine()
    cache = c.ResponseCache(engine)
    a, b = c.recent_entry("demo", "a", 60), c.recent_entry("demo", "b", 60)

    async def body() -> bytes:
        return b"[]"

    await cache.fetch(a, body)
    await cache.fetch(b, body)
    assert (await cache.fetch(a, body)).outcome == "hit"
    await cache.invalidate([c.recent_key("demo")])
    assert await engine.get(a) is None and await engine.get(b) is None


async def test_near_cache_serves_recent_reads_but_never_event_invalidated_entries():
    engine = c.MemoryCacheEngine()
    cache = c.ResponseCache(engine, near_ms=60_000)
    overview, status = c.overview_entry("demo", "k", 60), c.status_entry("demo", "e1", 60)

    async def body() -> bytes:
        return b"{}"

    await cache.fetch(overview, body)
    await cache.fetch(status, body)
    await engine.invalidate([overview.key, status.key])  # e.g. evicted or invalidated elsewhere
    assert (await cache.fetch(overview, body)).outcome == "hit"  # this process still has it, briefly
    assert (await cache.fetch(status, body)).outcome == "miss"  # status always asks the shared cache


async def test_a_rollup_round_invalidates_per_test_answers_and_this_process_near_copies():
    engine = c.MemoryCacheEngine()
    cache = c.ResponseCache(engine, near_ms=60_000)
    overview, failing = c.overview_entry("demo", "k", 60), c.tests_entry("tests_failing", "demo", "k", 120)
    trends, other = c.trends_entry("demo", "k", 300), c.overview_entry("other", "k", 60)
    answers = iter(range(100))

    async def body() -> bytes:
        return b"%d" % next(answers)

    for entry in (overview, failing, trends, other):
        await cache.fetch(entry, body)
        assert (await cache.fetch(entry, body)).outcome == "hit"
    await cache.rollups_applied(["demo"])  # the worker committed deltas of project demo
    assert (await cache.fetch(overview, body)).outcome == "miss"  # not even this process's near copy
    assert (await cache.fetch(failing, body)).outcome == "miss"
    assert (await cache.fetch(trends, body)).outcome == "hit"  # trends read no rollup
    assert (await cache.fetch(other, body)).outcome == "hit"


async def test_an_overview_aggregated_before_a_rollup_round_is_not_served_after_it():
    engine = c.MemoryCacheEngine()
    cache = c.ResponseCache(engine, near_ms=0)
    entry = c.overview_entry("demo", "k", 60)

    async def partial() -> bytes:
        await cache.rollups_applied(["demo"])  # the worker commits while the database is read
        return b'{"top_failing_tests":[]}'

    async def complete() -> bytes:
        return b'{"top_failing_tests":["t"]}'

    assert (await cache.fetch(entry, partial)).body == b'{"top_failing_tests":[]}'  # answered once
    assert await engine.get(entry) is None  # but never served from the cache
    assert (await cache.fetch(entry, complete)).outcome == "miss"
    assert (await cache.fetch(entry, complete)).outcome == "hit"


async def test_a_pod_that_wins_the_lock_after_another_stored_the_value_does_not_aggregate_again():
    engine = c.MemoryCacheEngine()  # shared by two "pods"
    pod_a, pod_b = c.ResponseCache(engine), c.ResponseCache(engine)
    entry = c.overview_entry("demo", "k", 60)

    async def body() -> bytes:
        return b'{"n":1}'

    await pod_a.fetch(entry, body)
    # Pod B read the cache just before pod A stored its value, and takes the lock just after pod A
    # released it: it must look again rather than run the aggregation a second time.
    got = await pod_b._fill(entry, body)
    assert (got.outcome, got.body) == ("miss", b'{"n":1}')
    assert pod_b.aggregations == {}


def test_cursor_contents_are_checked_like_parameters():
    import uuid

    u = "0b9c1c1e-6a3c-4e9d-8a44-1c1f8a1d2e3f"
    t = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    # returned in UTC, whatever the offset it was written with
    assert decode_cursor(encode_cursor("ex", "2026-03-01T14:00:00+02:00", u), "ex", (datetime, uuid.UUID)) == (t, u)
    assert decode_cursor(encode_cursor("rs", "a\tb", 2**31 - 1), "rs", (str, int)) == ("a\tb", 2**31 - 1)
    ex, rs = (datetime, uuid.UUID), (str, int)
    for kind, bad, types in (("ex", encode_cursor("ex", "0001-01-01T00:00:00+14:00", u), ex),
                             ("ex", encode_cursor("ex", "9999-12-31T23:00:00-05:00", u), ex),
                             ("rs", encode_cursor("rs", "a", 2**31), rs),
                             ("rs", encode_cursor("rs", "a", 0), rs),
                             ("rs", encode_cursor("rs", "a", True), rs),
                             ("rs", encode_cursor("rs", "a\x00", 1), rs)):
        with pytest.raises(ApiError) as info:
            decode_cursor(bad, kind, types)
        assert info.value.status == 400 and info.value.field == "cursor"


def test_ranges_stay_within_the_supported_years_so_their_arithmetic_cannot_overflow():
    config = QueryConfig(max_range_days=400, default_range_days=7)
    for params, field in ((RangeParams(project="p", to="0001-01-02"), "to"),
                          (RangeParams(project="p", from_="0001-01-01T00:00:00+01:00", to="2026-01-05"), "from"),
                          (RangeParams(project="p", from_="9999-12-30", to="9999-12-31T12:00"), "to"),
                          (RangeParams(project="p", from_="2026-01-01", to="2200-01-01T00:00:00.000001"), "to"),
                          (RangeParams(project="p", to="1970-01-01"), "to")):
        with pytest.raises(ApiError) as info:
            resolve_range(params, config)
        assert info.value.status == 400 and info.value.field == field, params
    # the edges are accepted, and the default start does not reach before the first supported day
    start, end = resolve_range(RangeParams(project="p", to="1970-01-03"), config)
    assert (start, end) == (datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(1970, 1, 3, tzinfo=timezone.utc))
    start, end = resolve_range(RangeParams(project="p", from_="2199-12-30T12:00", to="2200-01-01"), config)
    assert day_range(start, end) == (date(2199, 12, 30), date(2200, 1, 1))


async def test_a_ttl_of_zero_is_never_cached():
    engine = c.MemoryCacheEngine()
    cache = c.ResponseCache(engine, near_ms=60_000)
    entry = c.tests_entry("tests_failing", "demo", "k", 0)

    async def body() -> bytes:
        return b"{}"

    assert [(await cache.fetch(entry, body)).outcome for _ in range(3)] == ["miss"] * 3
    assert cache.aggregations == {"tests_failing": 3} and await engine.get(entry) is None
