"""Retention without a database: the horizon, which partitions go whole, the config, the CLI's words."""

from datetime import UTC, datetime

import pytest

from atas.cli.main import main
from atas.cli.retention import describe
from atas.common.config import ConfigError, load_settings
from atas.common.retention_plan import Partition, Report, cutoff_for, split_partitions

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092", "JWT_SECRET": "s" * 32, "DB_URL": "postgresql://h/db"}


def test_the_horizon_is_a_utc_midnight_so_rollup_days_go_whole():
    now = datetime(2026, 12, 4, 18, 30, tzinfo=UTC)
    assert cutoff_for(90, now) == datetime(2026, 9, 5, tzinfo=UTC)
    assert cutoff_for(1, now) == datetime(2026, 12, 3, tzinfo=UTC)


def _month(y: int, m: int) -> Partition:
    hi = datetime(y + m // 12, m % 12 + 1, 1, tzinfo=UTC)
    return Partition(f"results_{y}_{m:02d}", datetime(y, m, 1, tzinfo=UTC), hi, False)


def test_only_months_entirely_before_the_cutoff_are_dropped_whole():
    default = Partition("results_default", None, None, True)
    parts = [_month(2026, m) for m in (7, 8, 9, 10)] + [default]
    whole, partial = split_partitions(parts, datetime(2026, 9, 5, tzinfo=UTC))
    assert [p.name for p in whole] == ["results_2026_07", "results_2026_08"]
    # The cut month and the default partition (old imports) are deleted from row by row.
    assert [p.name for p in partial] == ["results_2026_09", "results_default"]
    whole, partial = split_partitions(parts, datetime(2026, 9, 1, tzinfo=UTC))
    assert [p.name for p in whole] == ["results_2026_07", "results_2026_08"]
    assert [p.name for p in partial] == ["results_default"]


def test_retention_days_defaults_to_90_and_is_read_in_every_mode():
    assert load_settings(BASE).retention_days == 90
    assert load_settings({**BASE, "RETENTION_DAYS": "30"}, mode="dev").retention_days == 30


@pytest.mark.parametrize("value, reason", [("abc", "integer"), ("0", "between 1"), ("-5", "between 1")])
def test_a_bad_retention_days_is_named(value, reason):
    with pytest.raises(ConfigError, match=f"RETENTION_DAYS must be.*{reason}"):
        load_settings({**BASE, "RETENTION_DAYS": value})


def test_the_command_refuses_a_bad_retention_days_with_status_2(monkeypatch, capsys):
    monkeypatch.setenv("DB_URL", "postgresql://127.0.0.1:1/db")
    monkeypatch.setenv("RETENTION_DAYS", "ninety")
    assert main(["retention", "--dry-run"]) == 2
    assert "RETENTION_DAYS must be an integer, got 'ninety'" in capsys.readouterr().err


def test_help_says_what_goes_how_and_the_dry_run(capsys):
    with pytest.raises(SystemExit):
        main(["retention", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("RETENTION_DAYS (default 90)", "--dry-run", "partitions", "outbox_dead rows older than 30 days",
                  "--lock-timeout-ms", "--json", "Exit status"):
        assert words in text, words


def test_the_summary_names_every_table_and_what_was_deferred():
    report = Report(days=90, cutoff=datetime(2026, 9, 5, tzinfo=UTC), dry_run=True)
    report.removed["results"].add(254_800, 88_100_000)
    report.partitions_dropped.append("results_2026_04")
    report.deferred.append("drop results_2026_05")
    text = describe(report)
    assert "would remove everything started before 2026-09-05T00:00:00Z (dry run" in text
    assert "254,800" in text and "88.1 MB" in text and "partitions to drop: results_2026_04" in text
    assert "deferred (busy, left for the next run): drop results_2026_05" in text
    assert report.to_dict()["removed"]["results"] == {"rows": 254_800, "bytes": 88_100_000}
