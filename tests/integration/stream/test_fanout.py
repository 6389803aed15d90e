"""Two stream apps on the real Redis and Kafka: bridge, cross-pod fan-out, resume, limits, auth."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from atas.common.bus import KafkaBus
from atas.stream.config import StreamConfig
from tests.conftest import make_settings

from .conftest import envelope, messages, warm_up

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


def _config(prefix: str, **kw) -> StreamConfig:
    return StreamConfig(redis_prefix=prefix, bridge_group=f"test-bridge-{uuid.uuid4().hex[:8]}",
                        heartbeat_s=kw.pop("heartbeat_s", 0.5), **kw)


@pytest.fixture
async def bus(kafka_settings):
    return KafkaBus(kafka_settings)


@pytest.fixture
async def publish(bus):
    pub = bus.publisher("test")
    await pub.start()

    async def _publish(events):
        await pub.publish(messages(events))

    yield _publish
    await pub.stop()


@pytest.fixture
async def two_pods(apps, sse, bus, redis_settings, kafka_settings, prefix, token):
    """Two stream apps sharing Redis and a Kafka consumer group, warmed up (every partition flowing)."""

    async def _start(**kw):
        config = _config(prefix, **kw)
        settings = make_settings(redis=redis_settings, kafka=kafka_settings)
        a = await apps.start(settings, config)
        b = await apps.start(settings, config)
        async with asyncio.timeout(60):
            while not (a.state.bridge.assigned and b.state.bridge.assigned):
                await asyncio.sleep(0.1)
        watcher = await sse(f"{a.url}/v1/stream?project=warmup", {"Authorization": f"Bearer {token(projects=['*'])}"})
        await warm_up(bus, watcher, "warmup")
        await watcher.close()
        return a, b

    return _start


def _ids(events) -> list[str]:
    return [json.loads(e.data)["id"] for e in events]


async def test_one_batch_reaches_a_client_on_each_pod_exactly_once(two_pods, sse, publish, token):
    a, b = await two_pods()
    auth = {"Authorization": f"Bearer {token()}"}
    on_a = await sse(f"{a.url}/v1/stream?project=demo", auth)
    on_b = await sse(f"{b.url}/v1/stream?project=demo", auth)
    for c in (on_a, on_b):
        await c.read_until(lambda c: c.parser.last_id is not None)  # connected and positioned
    execs = [str(uuid.uuid4()) for _ in range(6)]  # several keys: several partitions, both bridges
    batch = [envelope("demo", execution=execs[i % 6], seq=i) for i in range(30)]
    await publish(batch)
    await publish(batch[:10])  # a redelivery (same event ids) must not be published again
    for c in (on_a, on_b):
        got = await c.read_events(30)
        assert sorted(_ids(got)) == sorted(e.id for e in batch)
        for exe in execs:  # per-execution order is kept
            assert [json.loads(e.data)["seq"] for e in got if json.loads(e.data)["execution_id"] == exe] == \
                   [e.seq for e in batch if e.execution_id == exe]
    # nothing more arrives (the duplicates were dropped): the next event is the next one
    tail = envelope("demo", seq=99)
    await publish([tail])
    for c in (on_a, on_b):
        got = await c.read_events(31)
        assert len(got) == 31 and _ids(got)[-1] == tail.id
    assert on_a.events[-1].id == on_b.events[-1].id  # the same position on both pods


async def test_resume_gets_exactly_the_missed_events_in_order(two_pods, sse, publish, token):
    a, b = await two_pods()
    auth = {"Authorization": f"Bearer {token()}"}
    first = await sse(f"{a.url}/v1/stream?project=demo", auth)
    before = [envelope("demo", seq=i) for i in range(3)]
    await publish(before)
    got = await first.read_events(3)
    last_id = first.parser.last_id
    assert last_id == got[-1].id
    await first.close()
    # the history has the missed events once the other pod's clients see them
    watcher = await sse(f"{b.url}/v1/stream?project=demo", auth)
    await watcher.read_until(lambda c: c.parser.last_id is not None)
    exe = str(uuid.uuid4())
    missed = [envelope("demo", execution=exe, seq=i) for i in range(20)]
    await publish(missed)
    await watcher.read_events(20)
    resumed = await sse(f"{b.url}/v1/stream?project=demo", {**auth, "Last-Event-ID": last_id})
    got = await resumed.read_events(20)
    assert _ids(got) == [e.id for e in missed]
    live = envelope("demo", execution=exe, seq=20)
    await publish([live])
    got = await resumed.read_events(21)
    assert _ids(got) == [e.id for e in missed] + [live.id]
    positions = [tuple(map(int, e.id.split("-"))) for e in got]
    assert positions == sorted(positions) and len(set(positions)) == 21


async def test_an_id_older_than_the_history_gets_a_reset(two_pods, sse, publish, token):
    a, _b = await two_pods(history_max_len=5)
    auth = {"Authorization": f"Bearer {token()}"}
    watcher = await sse(f"{a.url}/v1/stream?project=demo", auth)
    await publish([envelope("demo", seq=0)])
    old_id = (await watcher.read_events(1))[0].id
    exe = str(uuid.uuid4())
    await publish([envelope("demo", execution=exe, seq=i) for i in range(10)])
    await watcher.read_events(11)
    late = await sse(f"{a.url}/v1/stream?project=demo", {**auth, "Last-Event-ID": old_id})
    got = await late.read_events(1)
    assert got[0].event == "reset"
    assert json.loads(got[0].data)["reason"] == "history_gap"
    assert got[0].id == watcher.events[-1].id  # resume point moves to now
    # and live continues after the reset
    nxt = envelope("demo", seq=11)
    await publish([nxt])
    got = await late.read_events(2)
    assert _ids(got[1:]) == [nxt.id]
    # a garbage id is a reset too, not an error
    bad = await sse(f"{a.url}/v1/stream?project=demo&last_event_id=not-an-id", auth)
    assert (await bad.read_events(1))[0].event == "reset"


async def test_filters_by_execution_and_type(two_pods, sse, publish, token):
    a, _b = await two_pods()
    auth = {"Authorization": f"Bearer {token()}"}
    exe, other = str(uuid.uuid4()), str(uuid.uuid4())
    only = await sse(f"{a.url}/v1/stream?project=demo&execution={exe}&types=execution.finished,execution.started",
                     auth)
    await only.read_until(lambda c: c.parser.last_id is not None)
    sent = [envelope("demo", execution=exe, type_="execution.started", seq=1, data={"name": "n"}),
            envelope("demo", execution=other, type_="execution.started", seq=1, data={"name": "n"}),
            envelope("demo", execution=exe, seq=2),
            envelope("demo", execution=exe, type_="execution.finished", seq=3, data={"status": "passed"})]
    await publish(sent)
    got = await only.read_events(2)
    assert _ids(got) == [sent[0].id, sent[3].id]


async def test_heartbeats_arrive_on_an_idle_stream(two_pods, sse, token):
    a, _b = await two_pods(heartbeat_s=0.2)
    client = await sse(f"{a.url}/v1/stream?project=quiet", {"Authorization": f"Bearer {token(projects=['quiet'])}"})
    await client.read_until(lambda c: c.parser.comments >= 3)
    assert client.parser.retry_ms == 2000


async def _stalled_socket(url: str, tok: str) -> socket.socket:
    """An SSE request on a raw socket with a tiny receive buffer; nobody reads it until told."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, f"GET /v1/stream?project=demo HTTP/1.1\r\nHost: x\r\n"
                                  f"Authorization: Bearer {tok}\r\n\r\n".encode())
    return sock


async def _flood_past(fast, publish) -> None:
    """400 x 60 KB: more than kernel socket buffers can absorb (loopback autotunes the server's
    send buffer up to tcp_wmem's max, 4 MB here) and more events than the client queue (200), so a
    stalled client is cut whichever limit it reaches first. Published in waves the fast reader
    keeps up with (it never has more than 10 pending, however slow this machine is), while a
    stalled one falls further behind every wave."""
    big = {"accepted": 1, "duplicates": 0, "counts": {}, "totals": {}, "blob": "x" * 60_000}
    exe = str(uuid.uuid4())
    batch = [envelope("demo", execution=exe, seq=i, data=big) for i in range(400)]
    for i in range(0, len(batch), 10):
        await publish(batch[i:i + 10])
        got = await fast.read_events(i + 10, timeout=30)
    assert _ids(got) == [e.id for e in batch]


def _metric(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def _until(predicate, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


SLOW_CUTS = ("atas_stream_disconnects_total", {"reason": "slow_consumer"})
ABORTS = ("atas_stream_stalled_aborts_total", None)


async def test_a_slow_client_is_cut_off_while_a_fast_one_keeps_receiving(two_pods, sse, publish, token):
    a, _b = await two_pods(client_queue=200, write_timeout_s=3.0)
    tok = token()
    fast = await sse(f"{a.url}/v1/stream?project=demo", {"Authorization": f"Bearer {tok}"})
    await fast.read_until(lambda c: c.parser.last_id is not None)
    cuts, aborts = _metric(*SLOW_CUTS), _metric(*ABORTS)
    slow = await _stalled_socket(a.url, tok)
    loop = asyncio.get_running_loop()
    try:
        await _flood_past(fast, publish)
        await _until(lambda: _metric(*SLOW_CUTS) > cuts, 30, "slow_consumer cut")
        # Read as soon as it is cut (well within the write timeout): a final `end` event says why,
        # then the server closes the stream.
        data = b""
        async with asyncio.timeout(30):
            while chunk := await loop.sock_recv(slow, 1 << 20):
                data += chunk
        tail = data[-400:].decode(errors="replace")
        assert "event: end" in tail and "slow_consumer" in tail
        assert _metric(*ABORTS) == aborts  # it read its final event: closed, not reset
    finally:
        slow.close()


async def test_a_client_that_never_reads_again_is_reset_not_kept(two_pods, sse, publish, token):
    """A cut-off peer that stays connected but never reads (zero window: TCP never times it out)
    must not keep its socket and buffers: the server resets it after the write timeout."""
    a, _b = await two_pods(client_queue=200, write_timeout_s=1.0)
    tok = token()
    fast = await sse(f"{a.url}/v1/stream?project=demo", {"Authorization": f"Bearer {tok}"})
    await fast.read_until(lambda c: c.parser.last_id is not None)
    aborts = _metric(*ABORTS)
    stalled = await _stalled_socket(a.url, tok)
    try:
        await _flood_past(fast, publish)
        tcp_close = 7  # tcpi_state, the first byte of struct tcp_info: the peer reset us
        await _until(lambda: stalled.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == tcp_close,
                     30, "reset of the stalled connection")
        assert _metric(*ABORTS) == aborts + 1
        assert len(a.state.hub.all_clients()) == 1  # only the fast one
        with pytest.raises(ConnectionResetError):
            while await asyncio.get_running_loop().sock_recv(stalled, 1 << 20):
                pass
    finally:
        stalled.close()


async def test_auth_errors_and_bad_parameters(two_pods, http, token):
    a, _b = await two_pods()
    url = f"{a.url}/v1/stream?project=demo"
    async with http.get(url) as r:
        assert r.status == 401
        assert "authentication required" in (await r.json())["error"]["message"]
    async with http.get(url, headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
    async with http.get(url, headers={"Authorization": f"Bearer {token(ttl=60, now=time.time() - 3600)}"}) as r:
        assert r.status == 401
    # expired 9 s ago: beyond the clock-skew allowance (the same rule as every REST endpoint)
    async with http.get(url, headers={"Authorization": f"Bearer {token(ttl=1, now=time.time() - 10)}"}) as r:
        assert r.status == 401 and "expired" in (await r.json())["error"]["message"]
    async with http.get(url, headers={"Authorization": f"Bearer {token(scopes=['query:read'])}"}) as r:
        assert r.status == 403
        assert "stream:read" in (await r.json())["error"]["message"]
    async with http.get(url, headers={"Authorization": f"Bearer {token(projects=['other'])}"}) as r:
        assert r.status == 403
    async with http.get(f"{url}&types=nope", headers={"Authorization": f"Bearer {token()}"}) as r:
        assert r.status == 400 and (await r.json())["error"]["field"] == "types"
    # malformed and unknown parameters are refused, not streamed nothing forever
    for query, field, words in (("&execution=not-a-uuid", "execution", "UUID"),
                                ("&exection=" + "0" * 8, "exection", "accepted: project"),
                                ("&execution=1&execution=2", "execution", "send it once")):
        async with http.get(url + query, headers={"Authorization": f"Bearer {token()}"}) as r:
            error = (await r.json())["error"]
            assert r.status == 400 and error["field"] == field and words in error["message"], error
    async with http.get(f"{a.url}/v1/stream?project=bad%20key", headers={"Authorization": f"Bearer {token()}"}) as r:
        assert r.status == 400 and "letters, digits" in (await r.json())["error"]["message"]
    async with http.get(f"{a.url}/v1/stream", headers={"Authorization": f"Bearer {token()}"}) as r:
        assert r.status == 400
    # the token may come as a query parameter (EventSource cannot set headers) or a cookie
    async with http.get(f"{url}&access_token={token()}") as r:
        assert r.status == 200
    async with http.get(url, cookies={"atas_token": token()}) as r:
        assert r.status == 200


async def test_the_stream_ends_when_the_token_expires(two_pods, sse, token):
    a, _b = await two_pods()
    # exp in ~2 s: the stream ends at exp + the 5 s skew allowance, the same deadline as REST
    client = await sse(f"{a.url}/v1/stream?project=demo", {"Authorization": f"Bearer {token(ttl=2)}"})
    got = await client.read_events(1, kinds={"end"}, timeout=30)
    assert json.loads(got[0].data)["reason"] == "token_expired"
    await client.read_until(lambda c: c.eof, timeout=10)
