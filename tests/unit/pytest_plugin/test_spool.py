"""The spool file: written by the plugin, read by `atas upload-spool`."""

import pytest

from atas.pytest_plugin.spool import BATCH_MAX_BYTES, SpoolError, SpoolWriter, read_spool, split_batches

EXECUTION = {"project": "shop", "name": "pytest", "id": "5b0f8e5e-3c1a-4a57-a3a8-1a4e6f0d1c11",
             "started_at": "2026-01-01T00:00:00+00:00"}


def _result(i, trace=""):
    return {"test_id": f"t{i}", "name": f"t{i}", "status": "failed", "id": f"id-{i}", "error_trace": trace}


def test_what_is_written_reads_back_and_nothing_is_written_when_nothing_was_spooled(tmp_path):
    path = tmp_path / "spool" / "x.jsonl"
    writer = SpoolWriter(path, EXECUTION)
    assert not writer.used and not path.exists()
    writer.add_results([_result(1), _result(2)])
    writer.add_results([_result(3)])
    writer.finish({"finished_at": "2026-01-01T00:01:00+00:00"})
    writer.close()
    spool = read_spool(path)
    assert spool.execution == EXECUTION and writer.results == 3
    assert [r["test_id"] for b in spool.batches for r in b] == ["t1", "t2", "t3"]
    assert spool.finish == {"finished_at": "2026-01-01T00:01:00+00:00"}


def test_a_final_line_cut_short_by_a_kill_is_ignored_but_damage_elsewhere_is_refused(tmp_path):
    path = tmp_path / "x.jsonl"
    writer = SpoolWriter(path, EXECUTION)
    writer.add_results([_result(1)])
    writer.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"v": 1, "type": "resu')
    assert len(read_spool(path).batches) == 1
    path.write_bytes(b'{"v": 1, "type": "resu\n' + whole)
    with pytest.raises(SpoolError, match="x.jsonl:1: not JSON"):
        read_spool(path)


def test_batches_split_by_count_and_by_size():
    assert [len(b) for b in split_batches([_result(i) for i in range(1201)], 500)] == [500, 500, 201]
    heavy = [_result(i, "x" * (BATCH_MAX_BYTES // 3)) for i in range(7)]
    assert [len(b) for b in split_batches(heavy, 500)] == [2, 2, 2, 1]
