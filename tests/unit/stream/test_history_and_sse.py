"""Pure logic of the stream service: resume coverage, the in-process history, SSE framing, config."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from atas.cli.tail import Printer, SseParser
from atas.common.config import ConfigError
from atas.common.events import encode_event, new_event
from atas.stream.config import load_config
from atas.stream.fanout import Client, Hub, encode_command
from atas.stream.history import ZERO, Event, MemoryHistory, covered, format_pos, parse_pos
from atas.stream.sse import END_SLOW, end_frame, event_frame, id_frame, reset_frame


def _payload(project="demo", execution="e1", type_="results.recorded", seq=1) -> bytes:
    return encode_event(new_event(type_, project=project, execution_id=execution, seq=seq,
                                  data={"counts": {"passed": 1}}, event_id=str(uuid.uuid4()),
                                  occurred_at=datetime.now(timezone.utc)))


def test_positions_parse_and_order_like_redis_stream_ids():
    assert parse_pos("1700000000000-3") == (1700000000000, 3)
    assert parse_pos(b"5-0") == (5, 0)
    assert parse_pos("garbage") is None and parse_pos("") is None and parse_pos(None) is None
    assert parse_pos("10-0") > parse_pos("9-99")  # numeric, not lexical
    assert format_pos((12, 4)) == "12-4"


@pytest.mark.parametrize("after, first, max_deleted, last, ok", [
    ((5, 0), (3, 0), (2, 0), (9, 0), True),    # inside the kept range
    ((2, 0), (3, 0), (2, 0), (9, 0), True),    # exactly the last trimmed one: nothing after it lost
    ((1, 0), (3, 0), (2, 0), (9, 0), False),   # events after it were trimmed
    ((0, 0), (3, 0), (0, 0), (9, 0), True),    # nothing ever trimmed: replay all
    ((0, 0), (3, 0), (2, 0), (9, 0), False),
    ((1, 5), (3, 0), (0, 0), (9, 0), False),   # from an older incarnation of the stream
    ((10, 0), (3, 0), (2, 0), (9, 0), False),  # never handed out
])
def test_a_resume_is_covered_only_when_nothing_after_it_was_lost(after, first, max_deleted, last, ok):
    assert covered(after, first, max_deleted, last) is ok


async def test_memory_history_dedupes_trims_and_reports_gaps():
    published = []
    h = MemoryHistory(max_len=3, publish=lambda p, e: published.append((p, e)))
    payloads = [_payload(seq=i) for i in range(5)]
    pos = await h.append([("demo", str(i), p) for i, p in enumerate(payloads)])
    assert all(pos) and pos == sorted(pos)
    assert await h.append([("demo", "0", payloads[0])]) == [None]  # redelivery
    assert len(published) == 5
    page = await h.read_after("demo", pos[1], 10)
    assert not page.gap and [e.pos for e in page.events] == pos[2:]
    assert (await h.read_after("demo", pos[0], 10)).gap
    assert (await h.read_after("demo", ZERO, 10)).gap
    assert await h.tail("demo") == pos[-1]
    assert (await h.read_after("nothing", ZERO, 10)).gap is False
    assert (await h.read_after("nothing", (1, 0), 10)).gap is True


def test_frames_follow_the_sse_format_and_parse_back():
    event = Event((17, 2), _payload())
    parser = SseParser()
    out = parser.feed(event_frame(event)[:10]) + parser.feed(event_frame(event)[10:])
    assert len(out) == 1 and out[0].id == "17-2" and out[0].event == "results.recorded"
    assert json.loads(out[0].data)["seq"] == 1
    assert parser.feed(id_frame((18, 0))) == [] and parser.last_id == "18-0"  # id only: no dispatch
    got = parser.feed(reset_frame((20, 0), "history_gap") + b": heartbeat\n\n" + end_frame(END_SLOW))
    assert [e.event for e in got] == ["reset", "end"] and parser.comments == 1
    assert got[0].id == "20-0" and json.loads(got[1].data)["reason"] == "slow_consumer"


def test_a_client_is_cut_off_when_its_queue_is_full_and_filters_apply():
    hub = Hub()
    client = Client("demo", execution="e1", types=None, limit=2, cursor=ZERO)
    hub.add(client)  # no writer yet (sink None): what passes the filter is queued
    hub.deliver("demo", [Event((1, 0), _payload(execution="other"))])
    assert not client.queue and client.filtered == (1, 0)
    for i in range(2):
        hub.deliver("demo", [Event((2, i), _payload())])
    assert len(client.queue) == 2 and client.ended is None
    hub.deliver("demo", [Event((3, 0), _payload())])
    assert client.ended == END_SLOW and not client.queue


def test_resp_commands_are_length_prefixed():
    assert encode_command("SUBSCRIBE", "a:b") == b"*2\r\n$9\r\nSUBSCRIBE\r\n$3\r\na:b\r\n"


def test_config_reads_stream_variables_and_names_bad_ones():
    cfg = load_config({"STREAM_HISTORY_MAX_LEN": "50", "STREAM_HEARTBEAT_SECONDS": "2.5",
                       "STREAM_BRIDGE_ENABLED": "false"})
    assert cfg.history_max_len == 50 and cfg.heartbeat_s == 2.5 and cfg.bridge_enabled is False
    with pytest.raises(ConfigError) as err:
        load_config({"STREAM_CLIENT_QUEUE": "0", "STREAM_MAX_CONNECTIONS": "lots"})
    assert "STREAM_CLIENT_QUEUE" in str(err.value) and "STREAM_MAX_CONNECTIONS" in str(err.value)


def test_tail_prints_readable_lines_without_colour_when_not_a_tty(tmp_path):
    out = (tmp_path / "out.txt").open("w+")
    printer = Printer(out=out, colour=None)
    for ev in SseParser().feed(event_frame(Event((1, 0), _payload())) + reset_frame((2, 0), "history_gap")):
        printer.event(ev)
    out.seek(0)
    text = out.read()
    out.close()
    assert "results.recorded" in text and "RESET" in text and "\033[" not in text


def test_the_resp_parser_returns_complete_replies_and_keeps_the_rest():
    from atas.stream.fanout import RespError, parse_replies

    stream = (b"*3\r\n$9\r\nsubscribe\r\n$3\r\nc:a\r\n:1\r\n"
              b"*3\r\n$7\r\nmessage\r\n$3\r\nc:a\r\n$5\r\nhello\r\n"
              b"-ERR nope\r\n"
              b"*3\r\n$7\r\nmessage\r\n$3\r\nc:a\r\n$10\r\nhal")
    replies, rest = parse_replies(stream)
    assert replies[:2] == [[b"subscribe", b"c:a", 1], [b"message", b"c:a", b"hello"]]
    assert isinstance(replies[2], RespError) and str(replies[2]) == "ERR nope"
    assert rest.startswith(b"*3\r\n$7\r\nmessage")
    more, rest = parse_replies(rest + b"f-there\r\n")
    assert more == [[b"message", b"c:a", b"half-there"]] and rest == b""
