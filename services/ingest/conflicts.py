"""Results sent again: an identical repeat is a duplicate, a different body is a 409.

A harness retrying a batch sends the same results again; they are counted as duplicates and not
stored twice. A result that repeats a stored ``(test_id, attempt)`` with another body is not a
retry: usually a rerun harness that forgot to raise ``attempt``. Keeping the first body silently
would drop the second outcome, so the whole batch is refused and the answer names the results.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from atas.common.errors import ApiError
from atas.common.schemas import ResultIn

# Stored results a batch meets again by (test_id, attempt). A result met again only by its client
# `id` stays a plain duplicate (documented: the id names the result, whatever else was sent), and
# ids are not compared: a harness that draws a fresh id for each send still retries harmlessly.
_STORED_RESULTS = """
SELECT test_id, attempt, name, suite, file, status, started_at, duration_ms, error_type, error_message,
       error_trace, attachments, attributes
FROM results
WHERE execution_started_at = $1 AND execution_id = $2
  AND (test_id, attempt) IN (SELECT * FROM unnest($3::text[], $4::int[]))
"""
_COMPARED = ("name", "suite", "file", "status", "started_at", "duration_ms", "error_type", "error_message",
             "error_trace")
_MAX_LISTED_CONFLICTS = 20


def _differences(r: ResultIn, stored: dict[str, Any]) -> list[str]:
    """Fields where ``r`` differs from a stored result (or an earlier result of the same batch)."""
    fields = [f for f in _COMPARED if getattr(r, f) != stored[f]]
    if msgspec.to_builtins(r.attachments or None) != (stored["attachments"] or None):
        fields.append("attachments")
    if (r.attributes or None) != (stored["attributes"] or None):
        fields.append("attributes")
    return fields


async def check_conflicts(conn: asyncpg.Connection, started_at: datetime, execution_id: uuid.UUID,
                           results: Sequence[ResultIn]) -> None:
    """409 when a result repeats a stored one (or one earlier in the batch) with another body.

    An identical repeat is a retry and counts as a duplicate; a different one (failed, then passed,
    from a rerun harness that forgot `attempt`) would otherwise drop the second outcome silently.
    Runs only on the retry path, under the execution's row lock, so concurrent batches cannot race
    past it."""
    rows = await conn.fetch(_STORED_RESULTS, started_at, execution_id, [r.test_id for r in results],
                            [r.attempt for r in results])
    by_key: dict[tuple[str, int], dict[str, Any]] = {(row["test_id"], row["attempt"]): dict(row) for row in rows}
    conflicts: list[dict[str, Any]] = []
    first_index = None
    for i, r in enumerate(results):
        stored = by_key.get((r.test_id, r.attempt))
        if stored is None:
            # Later results of the batch are compared with this one.
            as_row = {f: getattr(r, f) for f in _COMPARED}
            as_row.update(attachments=msgspec.to_builtins(r.attachments) or None, attributes=r.attributes or None)
            by_key[(r.test_id, r.attempt)] = as_row
            continue
        fields = _differences(r, stored)
        if fields:
            first_index = i if first_index is None else first_index
            conflicts.append({"index": i, "test_id": r.test_id, "attempt": r.attempt, "fields": fields})
    if conflicts:
        listed = "; ".join(f"{c['test_id']!r} attempt {c['attempt']} ({', '.join(c['fields'])})"
                           for c in conflicts[:5])
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        raise ApiError(409, "result_conflict",
                       f"{len(conflicts)} result(s) repeat a stored (test_id, attempt) with a different body: "
                       f"{listed}{more}. Report a rerun of a test with the next `attempt`; nothing of this "
                       "batch was stored", field=f"results[{first_index}]",
                       details={"conflicts": conflicts[:_MAX_LISTED_CONFLICTS]})
