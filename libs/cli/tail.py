"""``atas tail --project P``: follow a project's live stream in the terminal.

Reconnects on its own (with ``Last-Event-ID``, so nothing is missed or repeated), prints one
readable line per event, coloured when stdout is a terminal and ``NO_COLOR`` is not set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass, field


@dataclass
class SseEvent:
    """One dispatched Server-Sent Event (``event`` defaults to ``message`` as in browsers)."""

    event: str = "message"
    data: str = ""
    id: str | None = None  # the stream's lastEventId after this event


@dataclass
class SseParser:
    """Incremental parser of ``text/event-stream`` per the WHATWG spec (fields, comments, retry).

    ``feed(bytes)`` returns the events completed by that chunk; ``last_id`` and ``retry_ms`` follow
    the stream like ``EventSource`` does (an ``id:`` without data still moves ``last_id``);
    ``comments`` counts comment lines (heartbeats).
    """

    last_id: str | None = None
    retry_ms: int | None = None
    comments: int = 0
    _buf: bytes = b""
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buf += chunk
        out: list[SseEvent] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return out
            line = self._buf[:nl].rstrip(b"\r").decode("utf-8", "replace")
            self._buf = self._buf[nl + 1:]
            if line == "":
                if self._data:
                    out.append(SseEvent(self._event or "message", "\n".join(self._data), self.last_id))
                self._event, self._data = "", []
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id" and "\0" not in value:
                self.last_id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)


# --------------------------------------------------------------------------------- the command


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tail", help="follow a project's live events in the terminal",
        description="Follow GET /v1/stream of a project: one line per event, reconnecting with "
                    "Last-Event-ID so nothing is missed. Colour when stdout is a terminal (NO_COLOR "
                    "turns it off). Ctrl-C stops.",
    )
    p.add_argument("--project", "-p", required=True, help="project to follow")
    p.add_argument("--url", default=os.environ.get("ATAS_STREAM_URL") or os.environ.get("ATAS_URL"),
                   help="base URL of the stream service (default: $ATAS_STREAM_URL, else $ATAS_URL)")
    p.add_argument("--token", default=os.environ.get("ATAS_TOKEN"),
                   help="JWT with stream:read (default: $ATAS_TOKEN; mint one with `atas token`)")
    p.add_argument("--execution", "-e", default=None, help="only events of this execution id")
    p.add_argument("--types", "-t", default=None,
                   help="comma-separated event types (execution.started,results.recorded,execution.finished)")
    p.add_argument("--json", action="store_true", help="print each event's envelope as one JSON line")
    p.add_argument("--last-event-id", default=None, help="start after this event id (resume)")
    p.set_defaults(func=run)


_COLOURS = {"execution.started": "36", "results.recorded": "34", "execution.finished": "32",
            "reset": "33", "end": "35", "failed": "31", "dim": "2"}


class Printer:
    def __init__(self, out=None, colour: bool | None = None, as_json: bool = False):
        self.out = out or sys.stdout
        if colour is None:
            colour = self.out.isatty() and not os.environ.get("NO_COLOR")
        self.colour = colour
        self.as_json = as_json

    def _c(self, key: str, text: str) -> str:
        return f"\033[{_COLOURS[key]}m{text}\033[0m" if self.colour and key in _COLOURS else text

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(self._c("dim", f"-- {text}"), file=sys.stderr, flush=True)

    def event(self, ev: SseEvent) -> None:
        if self.as_json:
            self.line(ev.data)
            return
        try:
            body = json.loads(ev.data)
        except ValueError:
            self.line(f"{ev.event} {ev.data}")
            return
        if ev.event in ("reset", "end"):
            self.line(self._c(ev.event, f"{ev.event.upper()}: {body.get('message', '')} ({body.get('reason')})"))
            return
        when = str(body.get("occurred_at", ""))[11:23]
        data = body.get("data") or {}
        exe = str(body.get("execution_id", ""))[:8]
        head = f"{self._c('dim', when)} {self._c(ev.event, f'{ev.event:<18}')} {exe}"
        if ev.event == "execution.started":
            extra = " ".join(f"{k}={data[k]}" for k in ("name", "branch", "environment") if data.get(k))
            self.line(f"{head} {extra}")
        elif ev.event == "results.recorded":
            self.line(f"{head} +{describe_counts(data.get('counts'))}  (so far: "
                      f"{describe_counts(data.get('totals'))})")
            for test in data.get("failed") or []:
                msg = (test.get("error_message") or "").splitlines()[0:1]
                self.line("    " + self._c("failed", f"✗ {test.get('test_id')}") + (f"  {msg[0][:120]}" if msg else ""))
        elif ev.event == "execution.finished":
            status = data.get("status", "?")
            self.line(f"{head} " + self._c("failed" if status in ("failed", "error") else ev.event, status)
                      + f"  {describe_counts(data.get('totals'))}")
        elif ev.event == "attachment.stored":
            test = f" {data['test_id']}#{data.get('attempt') or 1}" if data.get("test_id") else ""
            self.line(f"{head} 📎 {data.get('name')} ({data.get('kind')}, {data.get('size_bytes')} B){test} "
                      f"{data.get('download', '')}")
        else:
            self.line(f"{head} {ev.data}")


_ORDER = ("passed", "failed", "error", "skipped", "flaky")


def describe_counts(counts) -> str:
    """``{"total": 12, "passed": 10, "failed": 2}`` → ``12 results: 10 passed, 2 failed`` (zeros left out)."""
    if not isinstance(counts, dict):
        return "" if counts is None else str(counts)
    parts = [f"{counts[k]} {k}" for k in _ORDER if counts.get(k)]
    parts += [f"{v} {k}" for k, v in sorted(counts.items()) if k not in _ORDER and k != "total" and v]
    total = counts.get("total", sum(v for k, v in counts.items() if k in _ORDER[:4] and isinstance(v, int)))
    return f"{total} result{'s' if total != 1 else ''}" + (f": {', '.join(parts)}" if parts else "")


def stream_url(base: str, project: str, execution: str | None, types: str | None) -> str:
    from urllib.parse import urlencode

    params = {"project": project}
    if execution:
        params["execution"] = execution
    if types:
        params["types"] = types
    return base.rstrip("/") + "/v1/stream?" + urlencode(params)


async def follow(url: str, token: str | None, printer: Printer, *, last_event_id: str | None = None,
                 stop: asyncio.Event | None = None) -> int:
    """Follow the stream until ``stop`` is set or the server refuses us (returns an exit code)."""
    import aiohttp

    parser = SseParser(last_id=last_event_id)
    delay = 1.0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while stop is None or not stop.is_set():
            headers = {"Accept": "text/event-stream"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            if parser.last_id:
                headers["Last-Event-ID"] = parser.last_id
            ended = None
            try:
                async with session.get(url, headers=headers) as resp:
                    if resp.status in (401, 403, 400, 404):
                        body = await resp.text()
                        printer.note(f"{resp.status}: {body.strip()}")
                        return 2
                    if resp.status != 200:
                        retry = resp.headers.get("Retry-After", "")
                        delay = float(retry) if retry.isdigit() else delay
                        printer.note(f"server answered {resp.status}; retrying in {delay:.0f}s")
                    else:
                        printer.note("connected" + (f", resuming after {parser.last_id}" if parser.last_id else ""))
                        delay = (parser.retry_ms or 1000) / 1000
                        async for chunk in resp.content.iter_any():
                            for ev in parser.feed(chunk):
                                printer.event(ev)
                                if ev.event == "end":
                                    ended = json.loads(ev.data).get("reason")
                            if parser.retry_ms is not None:
                                delay = parser.retry_ms / 1000
                        if ended == "token_expired":
                            printer.note("token expired; pass a fresh one with --token")
                            return 3
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                printer.note(f"connection failed: {exc}; retrying in {delay:.0f}s")
            if stop is not None:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(delay)
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.url:
        print("atas: give the stream URL with --url or $ATAS_STREAM_URL / $ATAS_URL", file=sys.stderr)
        return 2
    if args.execution:
        import uuid

        try:
            args.execution = str(uuid.UUID(args.execution))
        except ValueError:
            print(f"atas: --execution must be an execution id (a UUID such as "
                  f"1b4e28ba-2fa1-11d2-883f-0016d3cca427), got {args.execution!r}", file=sys.stderr)
            return 2
    url = stream_url(args.url, args.project, args.execution, args.types)
    printer = Printer(as_json=args.json)
    try:
        return asyncio.run(follow(url, args.token, printer, last_event_id=args.last_event_id))
    except KeyboardInterrupt:
        return 130
