"""A small ``kustomize build`` in Python, for the features deploy/k8s uses (no kubectl in CI).

Supported: ``resources`` (files and directories), ``components``, ``namespace``, ``labels``
(``includeSelectors: false``, ``includeTemplates``), ``images``, and ``patches`` (JSON 6902 with a
``target``; strategic merge, several documents per file, ``$patch: delete``). Anything else in a
kustomization is an error rather than silently ignored, so this renderer can't drift from what
``kubectl apply -k`` would do without a test failing. It was checked against kustomize v5.7.1 on
every overlay and component of this repository.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources", "components", "images", "patches"}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PriorityClass",
                   "CustomResourceDefinition", "IngressClass"}
# Strategic-merge keys of the lists our patches touch; other lists are replaced, as kustomize does
# for lists without a patchMergeKey.
_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
               "volumeMounts": "mountPath", "imagePullSecrets": "name"}


class KustomizeError(Exception):
    pass


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(directory: Path) -> list[dict]:
    """The objects ``kustomize build directory`` prints (order aside)."""
    return _build(Path(directory), "Kustomization", [])


def _kustomization(directory: Path, kind: str) -> dict:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(path.read_text()) or {}
    if k.get("kind", "Kustomization") != kind:
        raise KustomizeError(f"{path}: expected kind {kind}, got {k.get('kind')}")
    unknown = set(k) - _KEYS
    if unknown:
        raise KustomizeError(f"{path}: unsupported fields {sorted(unknown)} (extend tests/deploy/kustomize.py)")
    return k


def _build(directory: Path, kind: str, docs: list[dict]) -> list[dict]:
    k = _kustomization(directory, kind)
    docs = list(docs)
    for entry in k.get("resources", []):
        path = directory / entry
        docs += _build(path, "Kustomization", []) if path.is_dir() else load_yaml_docs(path)
    for entry in k.get("components", []):
        docs = _build(directory / entry, "Component", docs)
    for patch in k.get("patches", []):
        docs = _apply_patch(directory, patch, docs)
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in _CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
    for spec in k.get("labels", []):
        if spec.get("includeSelectors"):
            raise KustomizeError("labels with includeSelectors are not supported (selectors are immutable)")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(spec["pairs"])
            template = _pod_template(doc)
            if spec.get("includeTemplates") and template is not None:
                template.setdefault("metadata", {}).setdefault("labels", {}).update(spec["pairs"])
                for claim in doc["spec"].get("volumeClaimTemplates", []):
                    claim["metadata"].setdefault("labels", {}).update(spec["pairs"])
    for image in k.get("images", []):
        for doc in docs:
            for container in pod_containers(doc):
                _retag(container, image)
    return docs


def _pod_template(doc: dict) -> dict | None:
    spec = doc.get("spec") or {}
    if doc["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]
    return spec.get("template") if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job") else None


def pod_spec(doc: dict) -> dict | None:
    template = _pod_template(doc)
    return None if template is None else template["spec"]


def pod_containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]


def _retag(container: dict, image: dict) -> None:
    ref = container["image"]
    name, tag = (ref.split("@", 1)[0], None)
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != image["name"]:
        return
    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}" if image.get(
        "newTag", tag) else image.get("newName", name)


def _matches(doc: dict, target: dict) -> bool:
    for field in ("kind", "name"):
        if field in target:
            value = doc["kind"] if field == "kind" else doc["metadata"]["name"]
            if not re.fullmatch(target[field], value):
                return False
    return True


def _apply_patch(directory: Path, entry: dict, docs: list[dict]) -> list[dict]:
    if "path" in entry:
        patches = load_yaml_docs(directory / entry["path"])
    else:
        patches = list(yaml.safe_load_all(entry["patch"]))
    target = entry.get("target")
    if len(patches) == 1 and isinstance(patches[0], list):  # JSON 6902
        if target is None:
            raise KustomizeError("a JSON 6902 patch needs a target")
        hits = [d for d in docs if _matches(d, target)]
        if not hits:
            raise KustomizeError(f"patch target {target} matches nothing")
        for doc in hits:
            for op in patches[0]:
                _json_patch_op(doc, op)
        return docs
    for patch in patches:
        selector = target or {"kind": patch["kind"], "name": re.escape(patch["metadata"]["name"])}
        hits = [d for d in docs if _matches(d, selector)]
        if not hits:
            raise KustomizeError(f"strategic merge patch {selector} matches nothing")
        if patch.get("$patch") == "delete":
            docs = [d for d in docs if not any(d is h for h in hits)]
            continue
        for doc in hits:
            _merge(doc, patch)
    return docs


def _merge(base: dict, patch: dict) -> None:
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif isinstance(value, list) and key in _MERGE_KEYS and isinstance(base.get(key), list):
            mk = _MERGE_KEYS[key]
            for item in value:
                current = next((b for b in base[key] if b.get(mk) == item[mk]), None)
                if current is None:
                    base[key].append(copy.deepcopy(item))
                else:
                    _merge(current, item)
        else:
            base[key] = copy.deepcopy(value)


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _json_patch_op(doc: dict, op: dict) -> None:
    *parents, last = _pointer(op["path"])
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if isinstance(node, list):
        if kind == "add":
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif kind == "replace":
            node[int(last)] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[int(last)]
        else:
            raise KustomizeError(f"unsupported JSON patch op {kind}")
        return
    if kind in ("replace", "remove") and last not in node:
        raise KustomizeError(f"JSON patch {kind} of missing {op['path']}")
    if kind in ("add", "replace"):
        node[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[last]
    else:
        raise KustomizeError(f"unsupported JSON patch op {kind}")
