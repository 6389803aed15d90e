"""The ``atas`` pytest plugin (entry point ``pytest11``): report a pytest session to ATAS live.

Inert unless configured: without a URL, a token and a project (``--atas-url``/``ATAS_URL``,
``--atas-token``/``ATAS_TOKEN``, ``--atas-project``/``ATAS_PROJECT``) it registers nothing but its
options, so installing ``atas`` changes no other suite. Configured, it

* creates the execution when the session starts (id chosen here, CI metadata from the environment),
* streams a result per test attempt from a background thread while the tests run,
* finishes the execution when the session ends; the server derives the status (an interrupted
  session is ``cancelled``).

With pytest-xdist the controller reports for every worker: workers send their reports to it
anyway, so one execution gets every result with one connection; each worker is told the execution
id (``config.stash[EXECUTION_ID]``) for what it may upload itself later. Nothing the plugin does
can fail a test: errors turn the plugin off with one line on the terminal, and when ATAS is down
or slow the results go to a spool file that ``atas upload-spool FILE`` sends later.
"""

from __future__ import annotations

import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pytest

# The execution this session reports to (controller and xdist workers alike), when configured.
EXECUTION_ID = pytest.StashKey[str]()

_OPTIONS = (  # (option, environment variable, help)
    ("url", "ATAS_URL", "ATAS ingest URL, e.g. https://atas.example"),
    ("token", "ATAS_TOKEN", "token with the ingest:write scope for the project"),
    ("project", "ATAS_PROJECT", "project key the execution belongs to"),
    ("name", "ATAS_NAME", "execution name (default: 'pytest <root folder>')"),
    ("environment", "ATAS_ENVIRONMENT", "environment the tests ran against, e.g. staging"),
    ("spool-dir", "ATAS_SPOOL_DIR", "where undelivered results are written (default: <rootdir>/.atas-spool)"),
)
DEFAULT_TIMEOUT_S = 10.0


class Settings(NamedTuple):
    url: str
    token: str
    project: str
    name: str
    environment: str | None
    spool_dir: Path
    timeout_s: float


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("atas", "report results to ATAS while the tests run (off unless configured)")
    for option, env, help_ in _OPTIONS:
        group.addoption(f"--atas-{option}", dest=f"atas_{option.replace('-', '_')}", default=None,
                        metavar=option.split("-")[0].upper(), help=f"{help_} [env {env}]")
    group.addoption("--atas-timeout", dest="atas_timeout", type=float, default=None, metavar="SECONDS",
                    help=f"seconds per request to ATAS, and at most this long at the end of the session to "
                         f"deliver the rest before spooling it (default {DEFAULT_TIMEOUT_S:g})")


def resolve_settings(config: pytest.Config, env: Any = os.environ) -> Settings | None:
    """The plugin's settings, or None when it is not configured. Options win over the environment.
    A URL, token or project given on the command line without the other two is a usage error;
    the same in the environment alone is not configured (``atas dev`` exports ATAS_URL and
    ATAS_TOKEN for the CLI, which must not switch reporting on)."""
    values = {}
    explicit = False
    for option, var, _ in _OPTIONS:
        given = config.getoption(f"atas_{option.replace('-', '_')}")
        explicit = explicit or (given is not None and option in ("url", "token", "project"))
        values[option] = given if given is not None else (env.get(var) or None)
    missing = [f"--atas-{o} (or {v})" for o, v, _ in _OPTIONS[:3] if not values[o]]
    if missing:
        if explicit:
            raise pytest.UsageError(f"atas: reporting to ATAS also needs {' and '.join(missing)}")
        return None
    timeout = config.getoption("atas_timeout")
    if timeout is not None and not timeout > 0:
        raise pytest.UsageError(f"atas: --atas-timeout must be a positive number of seconds, got {timeout}")
    return Settings(
        url=values["url"], token=values["token"], project=values["project"],
        name=values["name"] or f"pytest {config.rootpath.name}", environment=values["environment"],
        spool_dir=Path(values["spool-dir"]) if values["spool-dir"] else config.rootpath / ".atas-spool",
        timeout_s=timeout or DEFAULT_TIMEOUT_S,
    )


def pytest_configure(config: pytest.Config) -> None:
    settings = resolve_settings(config)
    if settings is None:
        return
    config.pluginmanager.register(MarkerAnnotator(), "atas-markers")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: the controller reports its results
        if workerinput.get("atas_execution_id"):
            config.stash[EXECUTION_ID] = workerinput["atas_execution_id"]
        return
    reporter = Reporter(config, settings)
    config.stash[EXECUTION_ID] = reporter.execution_id
    config.pluginmanager.register(reporter, "atas-reporter")
    if config.pluginmanager.hasplugin("xdist"):  # its hook exists only then
        config.pluginmanager.register(XdistController(reporter.execution_id), "atas-xdist")


class MarkerAnnotator:
    """Puts the test's marker names on its setup report, where they travel with the report from
    an xdist worker to the controller (reports carry extra attributes across)."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any):
        report = yield
        if report.when == "setup":
            try:
                from atas.pytest_plugin.mapping import marker_names

                report.atas_markers = marker_names(item)
            except Exception:  # noqa: BLE001 - markers are a nicety; the test's report is not ours to break
                pass
        return report


class XdistController:
    """Tells every xdist worker the execution id (``config.stash[EXECUTION_ID]`` there)."""

    def __init__(self, execution_id: str):
        self.execution_id = execution_id

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["atas_execution_id"] = self.execution_id


class Reporter:
    """The reporting side, in the process that sees every report (pytest itself, or the xdist
    controller). Every hook swallows its own errors: reporting is never worth a failed test."""

    def __init__(self, config: pytest.Config, settings: Settings):
        from atas.pytest_plugin.mapping import ReportMapper

        self.config = config
        self.settings = settings
        self.execution_id = str(uuid.uuid4())
        self.spool_path = settings.spool_dir / f"{self.execution_id}.jsonl"
        self.mapper = ReportMapper()
        self.sender: Any = None
        self.results = 0
        self.failure: str | None = None  # the plugin's own error, if it turned itself off
        self._warned = False

    # ------------------------------------------------------------------ hooks
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.config.option.collectonly:
            return
        try:
            import msgspec

            from atas.common.schemas import ExecutionCreate
            from atas.pytest_plugin.sender import Sender
            from atas.pytest_plugin.spool import SpoolWriter
            from atas.pytest_plugin.transport import Transport

            execution = self.execution_body()
            try:
                msgspec.convert(execution, ExecutionCreate)
                Transport(self.settings.url, "", timeout_s=1)  # checks the URL's form, connects to nothing
            except (msgspec.ValidationError, ValueError) as exc:
                self._off(f"not reporting: the execution would be refused: {exc}")
                return
            self.sender = Sender(url=self.settings.url, token=self.settings.token, execution=execution,
                                 spool=SpoolWriter(self.spool_path, execution), timeout_s=self.settings.timeout_s)
            self.sender.start()
        except Exception as exc:  # noqa: BLE001
            self._off(f"not reporting, the plugin failed to start: {type(exc).__name__}: {exc}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.sender is None:
            return
        try:
            result = self.mapper.add(report)
            if result is not None:
                self.sender.put(result)
                self.results += 1
            if self.sender.problem is not None and not self._warned:
                self._warn_once()
        except Exception as exc:  # noqa: BLE001
            self._off(f"stopped reporting after an error of the plugin: {type(exc).__name__}: {exc}")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if self.sender is None or not report.failed:
            return
        try:
            self.sender.put(self.mapper.collect_error(report))
            self.results += 1
        except Exception as exc:  # noqa: BLE001
            self._off(f"stopped reporting after an error of the plugin: {type(exc).__name__}: {exc}")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.sender is None:
            return
        try:
            from atas.pytest_plugin.spool import iso

            finish: dict[str, Any] = {"finished_at": iso(datetime.now(timezone.utc))}
            if exitstatus == pytest.ExitCode.INTERRUPTED:
                finish["status"] = "cancelled"
            self.sender.close(finish, self.settings.timeout_s)
            self.sender.spool.close()
        except Exception as exc:  # noqa: BLE001
            self.failure = self.failure or f"the plugin failed at the end of the session: {exc}"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        try:
            for line in self.summary_lines():
                terminalreporter.write_line(line, yellow="spooled" in line or "not reporting" in line)
        except Exception:  # noqa: BLE001 - a summary line is not worth a failed session
            pass

    # ------------------------------------------------------------------ helpers
    def execution_body(self) -> dict[str, Any]:
        from atas.pytest_plugin.ci import detect_ci
        from atas.pytest_plugin.spool import iso

        ci = detect_ci(os.environ)
        attributes: dict[str, Any] = {"harness": "pytest", "pytest_version": pytest.__version__,
                                      "python_version": ".".join(map(str, sys.version_info[:3]))}
        if ci.provider:
            attributes["ci"] = ci.provider
        workers = getattr(self.config.option, "numprocesses", None)
        if workers:
            attributes["xdist_workers"] = workers
        body = {"project": self.settings.project, "name": self.settings.name, "id": self.execution_id,
                "environment": self.settings.environment, "branch": ci.branch, "commit": ci.commit,
                "build_url": ci.build_url, "started_at": iso(datetime.now(timezone.utc)),
                "attributes": attributes}
        return {k: v for k, v in body.items() if v is not None}

    def summary_lines(self) -> list[str]:
        if self.failure and self.sender is None:
            return [f"atas: {self.failure}"]
        if self.sender is None:
            return []
        lines = []
        spooled = self.sender.spool.results
        if self.sender.spool.used:
            lines.append(f"atas: {spooled} results spooled to {self.spool_path} ({self.sender.problem}); "
                         f"send them with: atas upload-spool {self.spool_path}")
        if self.sender.stored or not self.sender.spool.used:
            status = f", status {self.sender.finished['status']}" if self.sender.finished is not None else ""
            lines.append(f"atas: {self.sender.stored} of {self.results} results reported to execution "
                         f"{self.execution_id} in project {self.settings.project}{status}")
        if self.failure:
            lines.append(f"atas: {self.failure}")
        return lines

    def _warn_once(self) -> None:
        self._warned = True
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"atas: {self.sender.problem}; results go to {self.spool_path} "
                   f"(send them later with: atas upload-spool {self.spool_path})")
        if tr is not None:
            tr.write_line(message, yellow=True)
        else:
            print(message, file=sys.stderr)

    def _off(self, why: str) -> None:
        """Stop reporting for the rest of the session; say so once (not as a Python warning, which
        a suite running with -W error would turn into a failure)."""
        self.failure = why
        sender, self.sender = self.sender, None
        if sender is not None:
            try:
                sender.close({"finished_at": datetime.now(timezone.utc).isoformat()}, 1.0)
            except Exception:  # noqa: BLE001
                pass
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"atas: {why}", yellow=True)
