"""docker/Dockerfile.prod: lint-clean, multi-stage, pinned, non-root, ``atas`` as the entrypoint."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess

import pytest

from .conftest import ROOT, hadolint_path

pytestmark = pytest.mark.deploy

DOCKERFILE = ROOT / "docker" / "Dockerfile.prod"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


def image_user() -> int:
    """The numeric uid the final stage runs as (the manifests' runAsUser must equal it)."""
    users = [args for word, args in stages()[-1] if word == "USER"]
    return int(users[-1].split(":")[0])


def test_hadolint_passes():
    result = subprocess.run([hadolint_path(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_from_the_same_pinned_python_base():
    froms = [args.split()[0] for word, args in instructions() if word == "FROM"]
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    assert len(set(froms)) == 1, "builder and runtime must share the base, or the venv's python breaks"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", froms[0]), froms[0]


def test_the_wheel_is_built_from_pyproject_in_the_builder():
    builder = " ".join(args for _w, args in stages()[0])
    assert "pyproject.toml" in builder and "pip wheel" in builder


def test_runtime_stage_is_non_root_without_build_tools_and_runs_atas():
    final = stages()[-1]
    assert image_user() >= 10000, "a uid outside the host's usual range"
    text = " ".join(args for _w, args in final).lower()
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "pip wheel"):
        assert tool not in text, f"{tool} in the runtime stage"
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    assert json.loads(entry[-1]) == ["atas"]
    copies = [args for word, args in final if word == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "only built artifacts, no sources"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; "!" re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or fnmatch.fnmatch(path, "**/" + pattern):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = []
    for stage in stages():
        for word, args in stage:
            if word == "COPY" and not args.startswith("--from="):
                copied += [s.rstrip("/") for s in args.split()[:-1]]
    assert copied
    for source in copied:
        assert not _ignored(source, patterns), f"{source} is copied but excluded from the context"
    for secret_or_bulk in (".git", ".venv", ".stack", "tests", "deploy", ".env"):
        assert _ignored(secret_or_bulk, patterns), f"{secret_or_bulk} would be sent to the builder"


LOCK = ROOT / "docker" / "requirements.lock"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of docker/requirements.lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        name, _, version = requirement.partition("==")
        assert version, f"{requirement}: not pinned to one version"
        out[re.sub(r"[-_.]+", "-", name.lower())] = (version, [o.removeprefix("--hash=") for o in options])
    return out


def test_the_lock_pins_every_dependency_with_its_hashes():
    import tomllib

    locked = _locked()
    for name, (_version, hashes) in locked.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    for requirement in declared:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower())
        assert name in locked, f"{name} is in pyproject.toml but not in the lock: re-run pip-compile (docs/deploy.md)"


def test_locked_dependencies_install_in_a_layer_before_the_source():
    builder = stages()[0]
    words = [(w, a) for w, a in builder if w in ("COPY", "RUN")]
    lock_copy = next(i for i, (w, a) in enumerate(words) if w == "COPY" and "requirements.lock" in a)
    source_copy = next(i for i, (w, a) in enumerate(words) if w == "COPY" and a.startswith(("libs/", "services/")))
    install = next(i for i, (w, a) in enumerate(words) if w == "RUN" and "--require-hashes" in a)
    assert lock_copy < install < source_copy, "the dependency layer must not depend on the source"
    (build,) = [a for w, a in words[source_copy:] if w == "RUN" and "pip wheel" in a]
    # The project itself must not pull anything unlocked: no resolution, no build isolation.
    assert "--no-deps" in build and "--no-build-isolation" in build and "--no-index" in build
    assert "pip check" in build
