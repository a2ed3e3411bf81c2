"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the services a production
deployment needs are there, and every AFFECTSTREAM_* name is a real setting (a typo would be ignored
silently by ``Settings.load``)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from affectstream.streaming.worker.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SETTING_NAMES = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the x-app anchors and << merges


def test_compose_has_kafka_kraft_redis_aof_topics_workers_monitor_and_trainer(compose):
    services = compose["services"]
    assert set(services) >= {"kafka", "redis", "topics", "caption", "classify", "monitor", "trainer"}
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "zookeeper" not in services
    assert services["redis"]["image"].startswith("redis:")
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    assert services["topics"]["restart"] == "no"
    for name in ("caption", "classify", "monitor", "topics"):
        assert services[name]["image"].startswith("${AS_IMAGE:-affectstream")
    assert services["caption"]["command"][:3] == ["worker", "--role", "caption"]
    assert services["classify"]["command"][:3] == ["worker", "--role", "classify"]
    gpu = services["caption"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    # classify scales with --scale: no fixed host port, no container_name
    assert "ports" not in services["classify"] and "container_name" not in services["classify"]
    assert services["monitor"]["ports"] == ["${AS_DASHBOARD_PORT:-6066}:6066"]
    assert services["trainer"]["profiles"] == ["train"]
    assert "models:/models" in services["trainer"]["volumes"]
    assert "models:/models:ro" in services["classify"]["volumes"]
    for name in ("caption", "classify", "monitor"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        assert env["AFFECTSTREAM_BROKER_URL"] == "kafka://kafka:9092"
        assert env["AFFECTSTREAM_REDIS_URL"] == "redis://redis:6379/0"


def test_only_the_monitor_opens_the_web_port_and_it_needs_a_token_from_the_environment(compose):
    services = compose["services"]
    for name in ("caption", "classify", "topics"):
        env = services[name]["environment"]
        assert env.get("AFFECTSTREAM_WEB_ENABLED", "false") != "true" and "ports" not in services[name]
        assert "AFFECTSTREAM_WEB_BIND" not in env  # the default: loopback
    env = services["monitor"]["environment"]
    assert env["AFFECTSTREAM_WEB_BIND"] == "0.0.0.0"
    # no default: compose refuses to start without a token in .env or the shell
    assert re.fullmatch(r"\$\{AFFECTSTREAM_WEB_AUTH_TOKEN:\?[^}]+\}", env["AFFECTSTREAM_WEB_AUTH_TOKEN"])


def test_every_affectstream_variable_in_compose_is_a_setting_and_parses(compose):
    text = COMPOSE.read_text()
    used = set(re.findall(r"\bAFFECTSTREAM_[A-Z0-9_]+", text))
    assert used, "the compose file configures the app through AFFECTSTREAM_* variables"
    assert used - SETTING_NAMES == set()
    for name, service in compose["services"].items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items() if k.startswith(ENV_PREFIX)}
        # ${VAR:-default} -> default, as compose would without an .env file; ${VAR:?error} -> a value from .env
        env = {k: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
        env = {k: re.sub(r"\$\{[A-Z0-9_]+:\?[^}]*\}", "from-dot-env", v) for k, v in env.items()}
        Settings.load(env=env)  # every value has the right type


def test_dockerfile_builds_from_python_slim_with_pinned_cpu_torch():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "torch==2.13.0" in text and "whl/cpu" in text
    assert 'ENTRYPOINT ["affectstream"]' in text


def test_dockerfile_copies_every_folder_pyproject_maps_into_the_package():
    import tomllib

    text = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \./\1$", text, re.M))
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert {folder.split("/")[0] for folder in mapped.values()} <= copied


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_docker_compose_config_accepts_the_file():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    command = ["docker", "compose", "-f", str(COMPOSE), "--env-file", os.devnull, "--profile", "train", "config",
               "--quiet"]  # a developer's .env must not decide the outcome
    env = {**os.environ, "AFFECTSTREAM_WEB_AUTH_TOKEN": "a-token"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    env.pop("AFFECTSTREAM_WEB_AUTH_TOKEN")
    refused = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert refused.returncode != 0 and "AFFECTSTREAM_WEB_AUTH_TOKEN" in refused.stderr
