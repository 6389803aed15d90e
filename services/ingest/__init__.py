"""ATAS ingest service: the write path harnesses report to."""
