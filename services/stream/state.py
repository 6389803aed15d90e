"""The stream service's per-app state (one ``web.AppKey``), shared by routes and lifecycle."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from .bridge import Bridge
from .config import StreamConfig
from .fanout import Fanout, Hub
from .history import History


@dataclass
class StreamState:
    config: StreamConfig
    hub: Hub = field(default_factory=Hub)
    history: History | None = None  # set at startup: Redis or in-process, by ENGINES.redis
    fanout: Fanout | None = None
    bridge: Bridge | None = None
    closer: asyncio.Task | None = None  # spreads stream closes over the drain window
    ticker: asyncio.Task | None = None  # heartbeats, token expiry, catch-up retries


STREAM = web.AppKey("atas_stream", StreamState)
