"""The stream service on the in-process engines (what `atas dev` runs): same code, no servers."""

from __future__ import annotations

import json

from atas.common.bus import MemoryBus
from atas.stream.config import StreamConfig
from tests.conftest import make_settings

from .conftest import envelope, messages

CFG = StreamConfig(heartbeat_s=0.3, history_max_len=5, client_queue=100)


async def _publish(bus: MemoryBus, events) -> None:
    pub = bus.publisher()
    await pub.start()
    await pub.publish(messages(events))


async def test_live_events_reach_a_client_with_ids_and_types(apps, sse, token):
    bus = MemoryBus()
    app = await apps.start(make_settings(mode="dev"), CFG, bus=bus)
    await app.bridge_ready()
    client = await sse(f"{app.url}/v1/stream?project=demo", {"Authorization": f"Bearer {token()}"})
    assert client.status == 200
    assert client.resp.headers["Content-Type"].startswith("text/event-stream")
    assert client.resp.headers["Cache-Control"] == "no-cache, no-transform"
    assert client.resp.headers["X-Accel-Buffering"] == "no"
    await client.read_until(lambda c: c.parser.retry_ms is not None and c.parser.last_id is not None)
    sent = [envelope("demo", seq=i) for i in range(1, 4)] + [envelope("other")]
    await _publish(bus, sent)
    got = await client.read_events(3)
    assert [json.loads(e.data)["id"] for e in got] == [e.id for e in sent[:3]]
    assert [e.event for e in got] == ["results.recorded"] * 3
    assert len({e.id for e in got}) == 3
    # heartbeats while idle
    await client.read_until(lambda c: c.parser.comments >= 2)


async def test_resume_replays_exactly_the_missed_events_and_too_old_gets_reset(apps, sse, token):
    bus = MemoryBus()
    app = await apps.start(make_settings(mode="dev"), CFG, bus=bus)
    await app.bridge_ready()
    auth = {"Authorization": f"Bearer {token()}"}
    first = await sse(f"{app.url}/v1/stream?project=demo", auth)
    sent = [envelope("demo", seq=i) for i in range(1, 3)]
    await _publish(bus, sent)
    got = await first.read_events(2)
    last_id = got[-1].id
    await first.close()
    missed = [envelope("demo", seq=i) for i in range(3, 6)]
    await _publish(bus, missed)
    resumed = await sse(f"{app.url}/v1/stream?project=demo", {**auth, "Last-Event-ID": last_id})
    got = await resumed.read_events(3)
    assert [json.loads(e.data)["id"] for e in got] == [e.id for e in missed]
    # live continues after the replay, without duplicates
    live = envelope("demo", seq=6)
    await _publish(bus, [live])
    got = await resumed.read_events(4)
    assert [json.loads(e.data)["id"] for e in got] == [e.id for e in missed] + [live.id]
    # more than the history keeps (5) happened since `last_id`: explicit reset, never a silent gap
    await _publish(bus, [envelope("demo", seq=i) for i in range(7, 14)])
    old = await sse(f"{app.url}/v1/stream?project=demo&last_event_id={last_id}", auth)
    got = await old.read_events(1)
    assert got[0].event == "reset"
    assert json.loads(got[0].data)["reason"] == "history_gap"
    assert got[0].id is not None


async def test_a_filtered_client_resume_point_moves_past_events_it_skips(apps, sse, token):
    bus = MemoryBus()
    app = await apps.start(make_settings(mode="dev"), CFG, bus=bus)
    await app.bridge_ready()
    auth = {"Authorization": f"Bearer {token()}"}
    only_finished = await sse(f"{app.url}/v1/stream?project=demo&types=execution.finished", auth)
    everything = await sse(f"{app.url}/v1/stream?project=demo", auth)
    for c in (only_finished, everything):
        await c.read_until(lambda c: c.parser.last_id is not None)
    await _publish(bus, [envelope("demo", seq=i) for i in range(1, 9)])  # more than the history keeps (5)
    newest = (await everything.read_events(8))[-1].id
    await only_finished.read_until(lambda c: c.parser.last_id == newest)  # with a heartbeat
    assert only_finished.data_events() == []
    # so its reconnect is a clean resume, not a reset
    again = await sse(f"{app.url}/v1/stream?project=demo&types=execution.finished",
                      {**auth, "Last-Event-ID": only_finished.parser.last_id})
    last = envelope("demo", type_="execution.finished", seq=9, data={"status": "passed"})
    await _publish(bus, [last])
    got = await again.read_events(1)
    assert got[0].event == "execution.finished" and json.loads(got[0].data)["id"] == last.id


async def test_shutdown_closes_open_streams_with_a_final_event(apps, sse, http, token):
    app = await apps.start(make_settings(mode="dev", drain_seconds=2.0), StreamConfig(close_spread_s=0.5),
                           bus=MemoryBus())
    auth = {"Authorization": f"Bearer {token()}"}
    clients = [await sse(f"{app.url}/v1/stream?project=demo", auth) for _ in range(3)]
    for c in clients:
        await c.read_until(lambda c: c.parser.last_id is not None)
    await app.stop()  # what SIGTERM does: listener closed, on_shutdown, drain
    for c in clients:
        await c.read_until(lambda c: c.eof)
        assert [e.event for e in c.events][-1:] == ["end"]
        assert json.loads(c.events[-1].data)["reason"] == "shutdown"
