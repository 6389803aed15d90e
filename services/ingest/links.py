"""Results that link uploaded attachments by id: the ids must be of the same execution."""

from __future__ import annotations

import uuid

import asyncpg

from atas.common.errors import ApiError
from atas.common.schemas import ResultIn


async def check_result_links(conn: asyncpg.Connection, execution_id: uuid.UUID, results: list[ResultIn]) -> None:
    """422 naming the field when a result links an attachment id that is not of this execution."""
    refs = [(i, j, a.id) for i, r in enumerate(results) for j, a in enumerate(r.attachments) if a.id is not None]
    if not refs:
        return
    known = {r["id"] for r in await conn.fetch(
        "SELECT id FROM attachments WHERE execution_id = $1 AND id = ANY($2::uuid[])",
        execution_id, [ref[2] for ref in refs])}
    for i, j, att_id in refs:
        if att_id not in known:
            field = f"results[{i}].attachments[{j}].id"
            raise ApiError(422, "invalid_field", f"`{field}`: attachment {att_id} does not exist in this execution",
                           field=field)
