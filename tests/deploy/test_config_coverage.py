"""Configuration coverage: the ConfigMap and Secret provide exactly the variables the code reads,
with values every service accepts. The set is derived from the code (EnvReader calls and
``os.environ`` reads), so a variable added to a service without a deployment value fails here."""

from __future__ import annotations

import importlib
import inspect

import msgspec
import pytest

from .conftest import OVERLAYS, SERVICES, env_reads_of, one

pytestmark = pytest.mark.deploy

# Variables provided before the code that reads them exists (none now).
PENDING_CODE: set[str] = set()


def test_the_scanner_finds_every_way_the_code_reads_the_environment():
    source = '''
import os
from os import environ
def load(env):
    e = EnvReader(env)
    e.int("A_INT", 1, lo=0)
    e.float("A_FLOAT", 1.0)
    (e.str("A_STR", "x") or "x").lower()
    reader.str("OTHER_READER")
    os.environ.get("OS_GET")
    os.getenv("OS_GETENV")
    os.environ["OS_ITEM"]
    environ.get("BARE_ENVIRON")
    headers.get("NOT_ENV")
    e.int(name_in_a_variable, 1)
'''
    assert env_reads_of(source) == {"A_INT", "A_FLOAT", "A_STR", "OTHER_READER", "OS_GET", "OS_GETENV",
                                    "OS_ITEM", "BARE_ENVIRON"}


def test_every_variable_the_code_reads_is_provided_and_every_provided_one_is_read(
        code_env_vars, configmap, secret_template):
    provided_config = set(configmap)
    provided_secret = set(secret_template["stringData"])
    assert not provided_config & provided_secret, "a variable in both the ConfigMap and the Secret"
    provided = provided_config | provided_secret
    missing = {name: code_env_vars[name] for name in sorted(set(code_env_vars) - provided)}
    unread = sorted(provided - set(code_env_vars) - PENDING_CODE)
    assert not missing, f"read by the code but not in deploy/k8s/base/configmap.yaml or secrets.yaml: {missing}"
    assert not unread, f"provided but read by no code (stale or misspelt): {unread}"


def test_credentials_live_in_the_secret_not_the_configmap(configmap):
    for name in configmap:
        assert not any(word in name for word in ("PASSWORD", "SECRET", "TOKEN")), name
    assert "@" not in configmap["DB_URL"], "no credentials inside DB_URL"


def _service_config_loaders():
    """Each service's ``config`` module's loader: a module function or a ``from_env`` classmethod
    that takes the environment mapping and returns its frozen config struct."""
    loaders = {}
    for svc in SERVICES:
        module = importlib.import_module(f"atas.{svc}.config")
        for name, obj in vars(module).items():
            if inspect.isfunction(obj) and obj.__module__ == module.__name__ and name.startswith("load"):
                loaders[svc] = obj
            elif inspect.isclass(obj) and issubclass(obj, msgspec.Struct) and hasattr(obj, "from_env"):
                loaders.setdefault(svc, obj.from_env)
    return loaders


@pytest.mark.parametrize("variant", ["base", *[f"overlays/{o.name}" for o in OVERLAYS]])
def test_every_service_accepts_the_configmap_values(variants, variant):
    """The shipped values parse: a typo in the ConfigMap would otherwise stop pods at start."""
    from atas.common.config import load_settings

    configmap = one(variants[variant], "ConfigMap", "atas-config")["data"]
    env = {**configmap, "JWT_SECRET": "s" * 44, "DB_PASSWORD": "p" * 44, "REDIS_PASSWORD": "r" * 44}
    settings = load_settings(env)
    assert settings.port == int(configmap["PORT"])
    assert settings.redis is not None and settings.redis.host == configmap["REDIS_HOST"]
    assert settings.kafka is not None and settings.kafka.topic == configmap["KAFKA_TOPIC"]
    loaders = _service_config_loaders()
    assert set(loaders) == set(SERVICES), f"no config loader found for {set(SERVICES) - set(loaders)}"
    for svc, load in loaders.items():
        config = load(env)
        assert isinstance(config, msgspec.Struct), svc
