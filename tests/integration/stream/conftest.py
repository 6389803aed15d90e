"""Helpers for stream tests: an in-process stream app on a real port, and an SSE test client."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime, timezone

import aiohttp
import pytest
from aiohttp import web

from atas.cli.tail import SseEvent, SseParser
from atas.common.app import create_app
from atas.common.engines import install_engines
from atas.common.events import Envelope, encode_event, new_event
from atas.stream.app import setup
from atas.stream.config import StreamConfig
from atas.stream.state import STREAM
from tests.conftest import make_settings


def envelope(project: str, *, execution: str | None = None, type_: str = "results.recorded", seq: int = 1,
             data: dict | None = None, event_id: str | None = None) -> Envelope:
    return new_event(type_, project=project, execution_id=execution or str(uuid.uuid4()), seq=seq,
                     data=data if data is not None else {"accepted": 1, "duplicates": 0,
                                                         "counts": {"passed": 1}, "totals": {"passed": seq}},
                     occurred_at=datetime.now(timezone.utc), event_id=event_id)


def messages(events: list[Envelope]) -> list[tuple[bytes, bytes]]:
    return [(e.execution_id.encode(), encode_event(e)) for e in events]


class SseClient:
    """An SSE client over aiohttp that keeps the raw parser state (last id, heartbeats)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, headers: dict | None = None):
        self.session = session
        self.url = url
        self.headers = headers or {}
        self.resp: aiohttp.ClientResponse | None = None
        self.parser = SseParser()
        self.events: list[SseEvent] = []
        self.eof = False

    async def open(self) -> "SseClient":
        self.resp = await self.session.get(self.url, headers=self.headers)
        return self

    @property
    def status(self) -> int:
        assert self.resp is not None
        return self.resp.status

    async def read_until(self, predicate, timeout: float = 20.0) -> list[SseEvent]:
        """Read until predicate(self) is true; returns the events read so far."""
        assert self.resp is not None
        async with asyncio.timeout(timeout):
            while not predicate(self):
                chunk = await self.resp.content.readany()
                if not chunk:
                    self.eof = True
                    if not predicate(self):
                        raise AssertionError(f"stream ended early; got {self.events}")
                    break
                self.events.extend(self.parser.feed(chunk))
        return self.events

    async def read_events(self, n: int, timeout: float = 20.0, *, kinds: set[str] | None = None) -> list[SseEvent]:
        def enough(c):
            return len([e for e in c.events if kinds is None or e.event in kinds]) >= n
        await self.read_until(enough, timeout)
        return [e for e in self.events if kinds is None or e.event in kinds]

    def data_events(self) -> list[SseEvent]:
        return [e for e in self.events if e.event not in ("reset", "end")]

    async def close(self) -> None:
        if self.resp is not None:
            self.resp.close()
            self.resp = None


class StreamApp:
    """A stream app (create_app + engines + setup) served on a free loopback port."""

    def __init__(self, settings, config: StreamConfig, bus=None):
        self.settings = settings
        self.app = create_app(settings, "stream")
        self.engines = install_engines(self.app, application_name="atas-stream-test", bus=bus)
        setup(self.app, config)
        self.runner: web.AppRunner | None = None
        self.url = ""

    @property
    def state(self):
        return self.app[STREAM]

    async def start(self) -> "StreamApp":
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                    shutdown_timeout=self.settings.drain_seconds)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def bridge_ready(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self.state.bridge.ready.wait()

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as session:
        yield session


@pytest.fixture
def prefix() -> str:
    """Per-test Redis key/channel prefix (other test sessions share the server)."""
    return f"atas:test:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def apps():
    """Start StreamApps with apps.start(settings, config); all are stopped at the end."""
    started: list[StreamApp] = []

    class _Apps:
        async def start(self, settings, config, bus=None) -> StreamApp:
            app = StreamApp(settings, config, bus)
            started.append(app)
            return await app.start()

    yield _Apps()
    for app in reversed(started):
        with contextlib.suppress(Exception):
            await app.stop()


@pytest.fixture
async def sse(http):
    """Open SSE clients with sse(url, headers=...); all are closed at the end."""
    opened: list[SseClient] = []

    async def _open(url: str, headers: dict | None = None) -> SseClient:
        client = SseClient(http, url, headers=headers)
        opened.append(client)
        return await client.open()

    yield _open
    for c in opened:
        await c.close()


__all__ = ["SseClient", "StreamApp", "envelope", "messages", "make_settings"]


async def warm_up(bus, client: "SseClient", project: str, keys: int = 30) -> None:
    """Publish one event per key (covering every partition) and wait until `client` got them all.

    Proves every partition is consumed from its current end by some bridge, so what a test
    publishes next is seen (a fresh consumer group starts at "latest").
    """
    events = [envelope(project, execution=f"warm-{i}") for i in range(keys)]
    pub = bus.publisher("test-warm-up")
    await pub.start()
    try:
        await pub.publish(messages(events))
    finally:
        await pub.stop()
    await client.read_events(keys, timeout=60)


class TcpProxy:
    """A loopback TCP proxy in front of a real server that can simulate an outage.

    ``cut()`` drops every proxied connection and refuses new ones (accepted then closed) until
    ``restore()``: to the client it looks like the server went away and came back.
    """

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.down = False
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
                self._writers.discard(dst)

        for t in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    def cut(self) -> None:
        self.down = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.down = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
