"""ATAS harness client: report executions and results to the ingest API."""
