"""`atas tail`: follows a live stream in a terminal, and resumes after the server goes away."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from atas.common.bus import MemoryBus
from atas.stream.config import StreamConfig
from tests.conftest import make_settings
from tests.integration.stream.conftest import envelope, messages

pytestmark = pytest.mark.e2e


async def _line(proc, timeout: float = 30) -> str:
    return (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode()


async def test_tail_prints_events_and_resumes_after_a_disconnect(apps, token):
    bus = MemoryBus()
    app = await apps.start(make_settings(mode="dev"), StreamConfig(heartbeat_s=0.5, retry_ms=200), bus=bus)
    await app.bridge_ready()
    env = {**os.environ, "ATAS_URL": app.url, "ATAS_TOKEN": token(), "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "atas.cli.main", "tail", "--project", "demo", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            while app.state.hub.count < 1:
                await asyncio.sleep(0.05)
        pub = bus.publisher()
        first = envelope("demo", seq=1)
        await pub.publish(messages([first]))
        assert json.loads(await _line(proc))["id"] == first.id
        # the server ends the stream (as for a slow consumer) and an event happens before tail is
        # back (it waits retry_ms): tail reconnects with Last-Event-ID and gets it from the history
        for client in app.state.hub.all_clients():
            client.end("slow_consumer")
        missed = envelope("demo", seq=2)
        await pub.publish(messages([missed]))
        assert json.loads(await _line(proc))["reason"] == "slow_consumer"
        assert json.loads(await _line(proc))["id"] == missed.id
    finally:
        proc.terminate()
        await proc.wait()


async def test_tail_without_a_token_says_why_and_exits(apps):
    app = await apps.start(make_settings(mode="dev"), StreamConfig(), bus=MemoryBus())
    env = {k: v for k, v in os.environ.items() if k not in ("ATAS_TOKEN",)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "atas.cli.main", "tail", "--project", "demo", "--url", app.url, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"401" in err and b"authentication required" in err
