"""The manifests as ``kubectl apply -k`` sends them: rendered by kustomize itself (``kubectl
kustomize``), never by an imitation of it (STYLE.md §11: a hand-written renderer once accepted a
production overlay that crashed the real tool). Plus small readers of the rendered objects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

# kubectl embeds kustomize (v5.0.4 from kubectl 1.30, v5.5.0 from 1.32). scripts/test installs the
# Debian package `kubectl` when it is missing; a standalone `kustomize build` gives the same output.
MINIMUM_KUBECTL = (1, 30)


class RenderError(Exception):
    pass


def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        raise RenderError("kubectl not found: scripts/test installs it (apt-get install kubectl), or see "
                          "https://kubernetes.io/docs/tasks/tools/ for kubectl >= 1.30")
    return found


def kubectl_version() -> tuple[int, int]:
    out = subprocess.run([kubectl(), "version", "--client", "-o", "yaml"], capture_output=True, text=True,
                         check=True).stdout
    info = yaml.safe_load(out)["clientVersion"]
    return int(info["major"]), int(info["minor"].rstrip("+"))


def render(directory: Path) -> list[dict]:
    """The objects ``kubectl kustomize directory`` prints, in its order."""
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        # A panic prints a Go stack trace: the first lines say what happened.
        raise RenderError(f"kubectl kustomize {directory} failed ({result.returncode}):\n"
                          + "\n".join(result.stderr.splitlines()[:15]))
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _pod_template(doc: dict) -> dict | None:
    spec = doc.get("spec") or {}
    if doc["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]
    return spec.get("template") if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job") else None


def pod_template(doc: dict) -> dict | None:
    """The pod template of a workload (Deployment, StatefulSet, DaemonSet, Job, CronJob), else None."""
    return _pod_template(doc)


def pod_spec(doc: dict) -> dict | None:
    template = _pod_template(doc)
    return None if template is None else template["spec"]


def pod_containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]
