"""Branch, commit and build URL of the CI job the tests run in, read from the variables each CI
service documents. A pure function of the environment mapping, so every provider is unit-tested
without a CI of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import quote


class CiInfo(NamedTuple):
    provider: str | None = None  # e.g. "github-actions"; None outside a known CI
    branch: str | None = None
    commit: str | None = None
    build_url: str | None = None


def _strip_ref(ref: str | None) -> str | None:
    """``refs/heads/main`` → ``main`` (Azure, some Jenkins setups), ``origin/main`` → ``main``."""
    if not ref:
        return None
    for prefix in ("refs/heads/", "refs/tags/", "origin/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def _github(env: Mapping[str, str]) -> CiInfo:
    url = None
    if env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
        server = env.get("GITHUB_SERVER_URL") or "https://github.com"
        url = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
        if env.get("GITHUB_RUN_ATTEMPT"):
            url += f"/attempts/{env['GITHUB_RUN_ATTEMPT']}"
    # On a pull request GITHUB_REF_NAME is "123/merge"; the head branch is what people call it.
    return CiInfo("github-actions", env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME"),
                  env.get("GITHUB_SHA"), url)


def _gitlab(env: Mapping[str, str]) -> CiInfo:
    branch = env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME") or env.get("CI_COMMIT_REF_NAME")
    return CiInfo("gitlab-ci", branch, env.get("CI_COMMIT_SHA"), env.get("CI_JOB_URL") or env.get("CI_PIPELINE_URL"))


def _jenkins(env: Mapping[str, str]) -> CiInfo:
    # BRANCH_NAME in multibranch pipelines (CHANGE_BRANCH for a pull request); GIT_BRANCH from the
    # git plugin, usually "origin/main".
    branch = env.get("CHANGE_BRANCH") or env.get("BRANCH_NAME") or _strip_ref(env.get("GIT_BRANCH"))
    return CiInfo("jenkins", branch, env.get("GIT_COMMIT"), env.get("BUILD_URL"))


def _buildkite(env: Mapping[str, str]) -> CiInfo:
    url = env.get("BUILDKITE_BUILD_URL")
    if url and env.get("BUILDKITE_JOB_ID"):
        url += f"#{env['BUILDKITE_JOB_ID']}"
    return CiInfo("buildkite", env.get("BUILDKITE_BRANCH"), env.get("BUILDKITE_COMMIT"), url)


def _circleci(env: Mapping[str, str]) -> CiInfo:
    return CiInfo("circleci", env.get("CIRCLE_BRANCH"), env.get("CIRCLE_SHA1"), env.get("CIRCLE_BUILD_URL"))


def _azure(env: Mapping[str, str]) -> CiInfo:
    branch = _strip_ref(env.get("SYSTEM_PULLREQUEST_SOURCEBRANCH") or env.get("BUILD_SOURCEBRANCH"))
    url = None
    if env.get("SYSTEM_COLLECTIONURI") and env.get("SYSTEM_TEAMPROJECT") and env.get("BUILD_BUILDID"):
        base = env["SYSTEM_COLLECTIONURI"].rstrip("/")
        url = f"{base}/{quote(env['SYSTEM_TEAMPROJECT'])}/_build/results?buildId={env['BUILD_BUILDID']}"
    return CiInfo("azure-pipelines", branch, env.get("BUILD_SOURCEVERSION"), url)


# (marker variable, expected value or None for "set at all", reader). Checked in order; the marker
# variables are the ones each service documents as "you are running on us".
_PROVIDERS = (
    ("GITHUB_ACTIONS", "true", _github),
    ("GITLAB_CI", None, _gitlab),
    ("BUILDKITE", "true", _buildkite),
    ("CIRCLECI", "true", _circleci),
    ("TF_BUILD", "true", _azure),
    ("JENKINS_URL", None, _jenkins),
)


def detect_ci(env: Mapping[str, str]) -> CiInfo:
    """The CI job described by ``env`` (``os.environ``), or an empty :class:`CiInfo`."""
    for marker, value, reader in _PROVIDERS:
        found = env.get(marker)
        if found and (value is None or found.lower() == value):
            info = reader(env)
            # Empty strings (an unset variable exported as "") mean unknown, not "".
            return CiInfo(info.provider, info.branch or None, info.commit or None, info.build_url or None)
    return CiInfo()
