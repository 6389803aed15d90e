"""`atas tail` and `atas dev` say what is wrong in one line, and print totals as words."""

import socket

from atas.cli.main import main
from atas.cli.tail import Printer, SseEvent, describe_counts


def test_tail_refuses_an_execution_that_is_not_an_id(capsys):
    assert main(["tail", "-p", "demo", "--url", "http://127.0.0.1:9", "-e", "not-a-uuid"]) == 2
    err = capsys.readouterr().err
    assert "UUID" in err and "not-a-uuid" in err and len(err.strip().splitlines()) == 1


def test_totals_read_as_words_not_a_python_dict():
    assert describe_counts({"total": 12, "passed": 9, "failed": 2, "skipped": 1, "error": 0}) == \
        "12 results: 9 passed, 2 failed, 1 skipped"
    assert describe_counts({"total": 1, "passed": 1}) == "1 result: 1 passed"
    out = []
    printer = Printer(colour=False)
    printer.line = out.append
    printer.event(SseEvent(event="execution.finished", id="1-0", data='{"occurred_at": "2026-01-01T00:00:00Z", '
                           '"execution_id": "abc", "data": {"status": "failed", "totals": {"total": 3, "passed": 2, '
                           '"failed": 1}}}'))
    assert out and "3 results: 2 passed, 1 failed" in out[0] and "{" not in out[0]


def test_dev_with_its_port_taken_says_so_in_one_line_before_starting_anything(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("DB_URL", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dev", "--port", str(port), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"127.0.0.1:{port}" in err and "--port" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "stack").exists()  # PostgreSQL was not started
