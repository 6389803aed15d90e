"""What retention removes: the horizon, the report of a run, and which ``results`` partitions lie
entirely past the horizon (dropped whole) or straddle it (deleted from row by row). See
:mod:`atas.common.retention` for how."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

# Dead outbox events are kept this long for operators to inspect (docs/ingest.md), whatever
# RETENTION_DAYS says: they describe delivery failures, not test data.
OUTBOX_DEAD_DAYS = 30
# Tables in report order; `results` counts dropped partitions and deleted rows alike.
TABLES = ("results", "executions", "query_test_daily", "query_test_daily_branch", "outbox_dead",
          "attachment_objects")

Progress = Callable[[str], None]


@dataclass
class Tally:
    rows: int = 0
    bytes: int = 0  # on-disk size of dropped partitions plus the stored size of deleted rows

    def add(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes


@dataclass
class Report:
    """What a run removed (or, with ``dry_run``, would remove)."""

    days: int
    cutoff: datetime
    dry_run: bool
    removed: dict[str, Tally] = field(default_factory=lambda: {t: Tally() for t in TABLES})
    partitions_dropped: list[str] = field(default_factory=list)
    # Steps that could not get their locks within lock_timeout after every retry: the next run
    # removes what they left.
    deferred: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "retention_days": self.days, "cutoff": self.cutoff.isoformat().replace("+00:00", "Z"),
            "dry_run": self.dry_run,
            "removed": {t: {"rows": v.rows, "bytes": v.bytes} for t, v in self.removed.items()},
            "partitions_dropped": self.partitions_dropped, "deferred": self.deferred, "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def cutoff_for(days: int, now: datetime | None = None) -> datetime:
    """The start of the oldest kept UTC day: everything that started before it is removed."""
    now = now or datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    return midnight - timedelta(days=days)


@dataclass(frozen=True)
class Partition:
    name: str  # quoted, as regclass prints it
    lo: datetime | None  # None: the default partition, or MINVALUE
    hi: datetime | None
    is_default: bool


_PARTITIONS = """
SELECT c.oid::regclass::text AS name, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz AS lo,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz AS hi
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'results'::regclass
ORDER BY lo NULLS LAST, name
"""


async def result_partitions(conn: asyncpg.Connection) -> list[Partition]:
    return [Partition(r["name"], r["lo"], r["hi"], r["is_default"]) for r in await conn.fetch(_PARTITIONS)]


def split_partitions(parts: list[Partition], cutoff: datetime) -> tuple[list[Partition], list[Partition]]:
    """(partitions entirely before the cutoff, partitions that may hold rows on both sides of it)."""
    whole = [p for p in parts if not p.is_default and p.hi is not None and p.hi <= cutoff]
    partial = [p for p in parts if p not in whole and (p.is_default or p.lo is None or p.lo < cutoff)]
    return whole, partial
