"""Live monitors: SSE clients of one stream process that reconnect with ``Last-Event-ID`` the way
a browser's EventSource does, and keep every event they saw (per execution: seq and event id)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Seen:
    """What one monitor saw, in order: ("event", execution_id, seq, event_id) or ("reset", ...)."""

    log: list[tuple] = field(default_factory=list)
    connects: int = 0
    ends: dict[str, int] = field(default_factory=dict)


class Monitor:
    """An SSE client of ``url``; ``stall_s`` > 0 makes it stop reading for that long when asked
    (the "client that stops reading" fault)."""

    def __init__(self, name: str, url: str, token: str, project: str):
        self.name, self.url, self.token, self.project = name, url, token, project
        self.seen = Seen()
        self.last_id: str | None = None
        self.stall = asyncio.Event()
        self.stall_s = 0.0

    async def run(self, stop: asyncio.Event, session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            headers = {"Authorization": f"Bearer {self.token}"}
            if self.last_id:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with session.get(self.url + "/v1/stream", params={"project": self.project}, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=None, sock_connect=3,
                                                                     sock_read=30)) as resp:
                    if resp.status != 200:
                        await resp.read()
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                    self.seen.connects += 1
                    await self._read(resp, stop)
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                pass
            if not stop.is_set():
                try:  # EventSource waits `retry:` (2 s by default) before reconnecting
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass

    async def _read(self, resp: aiohttp.ClientResponse, stop: asyncio.Event) -> None:
        buf = b""
        fields: dict[str, str] = {}
        while not stop.is_set():
            if self.stall.is_set():
                self.stall.clear()
                await asyncio.sleep(self.stall_s)
            chunk = await resp.content.readany()
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode("utf-8").rstrip("\r")
                if text == "":
                    self._dispatch(fields)
                    fields = {}
                elif text.startswith(":"):
                    continue
                else:
                    name, _, value = text.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value

    def _dispatch(self, fields: dict[str, str]) -> None:
        if "id" in fields:
            self.last_id = fields["id"]
        kind = fields.get("event", "message")
        if "data" not in fields:
            return
        if kind == "reset":
            self.seen.log.append(("reset",))
        elif kind == "end":
            reason = json.loads(fields["data"]).get("reason", "?")
            self.seen.ends[reason] = self.seen.ends.get(reason, 0) + 1
        else:
            env = json.loads(fields["data"])
            self.seen.log.append(("event", env["execution_id"], env["seq"], env["id"]))
