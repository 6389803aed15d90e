"""The ATAS pytest plugin: ``pytest --atas-url URL --atas-token TOKEN --atas-project KEY`` reports
the session live to the ingest API. See docs/pytest.md; the hooks live in :mod:`.plugin`."""
