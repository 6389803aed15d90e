"""CI detection: each provider's documented variables become branch, commit and build URL."""

import pytest

from atas.pytest_plugin.ci import CiInfo, detect_ci

SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"


@pytest.mark.parametrize(("env", "expected"), [
    pytest.param({"GITHUB_ACTIONS": "true", "GITHUB_REF_NAME": "main", "GITHUB_SHA": SHA,
                  "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "acme/shop",
                  "GITHUB_RUN_ID": "7", "GITHUB_RUN_ATTEMPT": "2"},
                 CiInfo("github-actions", "main", SHA, "https://github.com/acme/shop/actions/runs/7/attempts/2"),
                 id="github-push"),
    pytest.param({"GITHUB_ACTIONS": "true", "GITHUB_REF_NAME": "12/merge", "GITHUB_HEAD_REF": "fix-cart",
                  "GITHUB_SHA": SHA},
                 CiInfo("github-actions", "fix-cart", SHA, None), id="github-pull-request"),
    pytest.param({"GITLAB_CI": "true", "CI_COMMIT_REF_NAME": "main", "CI_COMMIT_SHA": SHA,
                  "CI_JOB_URL": "https://gitlab.com/acme/shop/-/jobs/5"},
                 CiInfo("gitlab-ci", "main", SHA, "https://gitlab.com/acme/shop/-/jobs/5"), id="gitlab"),
    pytest.param({"GITLAB_CI": "true", "CI_COMMIT_REF_NAME": "refs/merge-requests/3/head",
                  "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "fix-cart", "CI_COMMIT_SHA": SHA},
                 CiInfo("gitlab-ci", "fix-cart", SHA, None), id="gitlab-merge-request"),
    pytest.param({"JENKINS_URL": "https://ci.acme/", "GIT_BRANCH": "origin/release-2", "GIT_COMMIT": SHA,
                  "BUILD_URL": "https://ci.acme/job/shop/9/"},
                 CiInfo("jenkins", "release-2", SHA, "https://ci.acme/job/shop/9/"), id="jenkins-git-plugin"),
    pytest.param({"JENKINS_URL": "https://ci.acme/", "BRANCH_NAME": "PR-4", "CHANGE_BRANCH": "fix-cart",
                  "GIT_COMMIT": SHA},
                 CiInfo("jenkins", "fix-cart", SHA, None), id="jenkins-multibranch-pr"),
    pytest.param({"BUILDKITE": "true", "BUILDKITE_BRANCH": "main", "BUILDKITE_COMMIT": SHA,
                  "BUILDKITE_BUILD_URL": "https://buildkite.com/acme/shop/builds/3", "BUILDKITE_JOB_ID": "j-1"},
                 CiInfo("buildkite", "main", SHA, "https://buildkite.com/acme/shop/builds/3#j-1"), id="buildkite"),
    pytest.param({"CIRCLECI": "true", "CIRCLE_BRANCH": "main", "CIRCLE_SHA1": SHA,
                  "CIRCLE_BUILD_URL": "https://circleci.com/gh/acme/shop/8"},
                 CiInfo("circleci", "main", SHA, "https://circleci.com/gh/acme/shop/8"), id="circleci"),
    pytest.param({"TF_BUILD": "True", "BUILD_SOURCEBRANCH": "refs/heads/feature/cart", "BUILD_SOURCEVERSION": SHA,
                  "SYSTEM_COLLECTIONURI": "https://dev.azure.com/acme/", "SYSTEM_TEAMPROJECT": "Web Shop",
                  "BUILD_BUILDID": "11"},
                 CiInfo("azure-pipelines", "feature/cart", SHA,
                        "https://dev.azure.com/acme/Web%20Shop/_build/results?buildId=11"), id="azure"),
    pytest.param({"TF_BUILD": "True", "BUILD_SOURCEBRANCH": "refs/pull/5/merge",
                  "SYSTEM_PULLREQUEST_SOURCEBRANCH": "refs/heads/fix-cart", "BUILD_SOURCEVERSION": SHA},
                 CiInfo("azure-pipelines", "fix-cart", SHA, None), id="azure-pull-request"),
])
def test_each_ci_gives_branch_commit_and_build_url(env, expected):
    assert detect_ci(env) == expected


def test_outside_ci_nothing_is_guessed():
    assert detect_ci({"HOME": "/root", "CI": "true"}) == CiInfo()


def test_empty_variables_are_unknown_not_empty_strings():
    assert detect_ci({"CIRCLECI": "true", "CIRCLE_BRANCH": "", "CIRCLE_SHA1": SHA}) == CiInfo("circleci", None, SHA, None)


def test_a_marker_variable_set_to_false_is_not_that_ci():
    assert detect_ci({"GITHUB_ACTIONS": "false", "GITLAB_CI": "true", "CI_COMMIT_SHA": SHA}).provider == "gitlab-ci"
