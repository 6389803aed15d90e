"""The stream test fixtures (in-process apps, SSE clients) for the e2e tests too."""

from tests.integration.stream.conftest import apps, http, prefix, sse  # noqa: F401 - pytest fixtures
