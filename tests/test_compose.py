"""The docker compose deployment, checked without docker (which cannot run here).

Static checks on docker-compose.yml, the Dockerfile, .env.example and the Grafana
provisioning; and the parts that can run for real do: the broker starts from the very
mosquitto.conf compose mounts (its container paths mapped to local folders through the
compose file's own mounts), with the password file the broker-init job writes, and
accepts and refuses the accounts it should.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from dashboards.grafana import DEFAULT_DATASOURCE_UID
from orchard.broker import device_password, read_password_file
from orchard.broker_init import BrokerInitSettings, write_broker_passwords
from orchard.layout import load_orchard
from orchard.settings import PROJECT_ROOT
from orchard.stack import MOSQUITTO_CONF_DIR, ManagedProcess, free_port, require_binary

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])[^}]*)?\}")
_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _strings(node: Any) -> list[str]:
    """Every string value of the parsed file (comments are not configuration)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def one_shot(name: str) -> bool:
    return SERVICES[name].get("restart") == "no"


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


class _StrictLoader(yaml.SafeLoader):
    """Refuses duplicate keys (a second ``<<`` too), as docker compose's parser does."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [k.value for k, _ in node.value]
    duplicated = {k for k in keys if keys.count(k) > 1}
    if duplicated:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {sorted(duplicated)}", node.start_mark
        )
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def test_compose_file_parses_strictly() -> None:
    assert yaml.load(COMPOSE_FILE.read_text(), Loader=_StrictLoader) == COMPOSE
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate keys"):
        yaml.load("a: &x {b: 1}\nc:\n  <<: *x\n  <<: *x\n", Loader=_StrictLoader)


def test_services_of_a_farm() -> None:
    assert {"mosquitto", "influxdb", "grafana", "postgres", "ingest", "control", "api"} <= set(
        SERVICES
    )
    assert SERVICES["simulator"]["profiles"] == ["demo"]
    for name in ("mosquitto", "influxdb", "grafana", "postgres", "ingest", "control", "api"):
        assert "profiles" not in SERVICES[name], f"{name} must start without a profile"


def test_every_mounted_file_exists_and_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes", {}))
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts missing {source}"
                assert not source.startswith("/"), f"{name}: absolute host path {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
    assert {
        "broker-data",
        "broker-auth",
        "influxdb-data",
        "postgres-data",
        "grafana-data",
    } <= declared


def test_broker_uses_the_projects_own_configuration() -> None:
    mounts = dict(bind_mounts(SERVICES["mosquitto"]))
    config = PROJECT_ROOT / "config" / "mosquitto"
    assert config == MOSQUITTO_CONF_DIR  # the folder orchard.stack (make up, tests) loads
    assert mounts["./config/mosquitto/conf.d"] == "/mosquitto/config/conf.d"
    assert mounts["./config/mosquitto/acl"] == "/mosquitto/config/acl"
    conf = (config / "mosquitto.conf").read_text()
    assert "include_dir /mosquitto/config/conf.d" in conf
    assert "acl_file /mosquitto/config/acl" in conf
    volumes = [v.split(":") for v in SERVICES["mosquitto"]["volumes"]]
    assert ["broker-data", "/mosquitto/data"] in volumes
    assert "persistence_location /mosquitto/data/" in conf


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() -> None:
    for name, service in SERVICES.items():
        if one_shot(name):
            assert "healthcheck" not in service
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name} healthcheck lacks {key}"
        for dependency, spec in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if one_shot(dependency) else "service_healthy"
            assert spec == {"condition": wanted}, f"{name} -> {dependency}"
    assert set(SERVICES["mosquitto"]["depends_on"]) == {"broker-init"}
    assert set(SERVICES["control"]["depends_on"]) == {"mosquitto", "influxdb", "postgres"}
    assert set(SERVICES["ingest"]["depends_on"]) == {"mosquitto", "influxdb"}
    assert set(SERVICES["grafana"]["depends_on"]) == {"influxdb"}


def test_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} is not pinned"
        assert re.match(r"^\d+\.\d+(\.\d+)?", tag), f"{name}: {image} has no explicit version"
    assert SERVICES["influxdb"]["image"].startswith("influxdb:1.12.")
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert bases and all(re.search(r":\d+\.\d+\.\d+", b) for b in bases), bases
    assert re.search(r"^USER\s+(?!root|0\b)\S+", dockerfile, re.M), "the image must not run as root"
    assert (
        "--constraint requirements.lock" in dockerfile
        and "pip install --no-deps -e ." in dockerfile
    )


def test_no_secret_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    assert "change-me" not in text
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            value = "" if value is None else str(value)
            if _SECRET_KEY.search(key) and value:
                assert _VAR.fullmatch(value), f"{name}.{key} holds a literal, not a ${{VAR}}"
            if "://" in value and "@" in value:  # credentials inside a URL
                userinfo = value.split("://", 1)[1].split("@", 1)[0]
                assert _VAR.search(userinfo.split(":", 1)[-1]), f"{name}.{key}: password in URL"


def test_every_variable_is_documented_in_env_example() -> None:
    documented = env_example()
    used = {m.group(1) for text in _strings(COMPOSE) for m in _VAR.finditer(text)}
    assert used - set(documented) == set()
    # A secret is either required (a change-me placeholder in the example, no default in
    # compose, which refuses to start without it) or optional (empty: the feature is off).
    text = COMPOSE_FILE.read_text()
    for key, value in documented.items():
        if not _SECRET_KEY.search(key):
            continue
        if value:
            assert value.startswith("change-me"), f"{key} should be a change-me placeholder"
            assert "${" + key + ":?" in text, f"compose should require {key}"
        else:
            assert "${" + key + ":-}" in text, f"optional {key} should default to empty"


def test_placeholders_are_refused_outside_demo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = env_example()
    for key in (
        "ORCHARD_DEVICE_SECRET",
        "ORCHARD_INGEST_MQTT_PASSWORD",
        "ORCHARD_CONTROL_MQTT_PASSWORD",
        "ORCHARD_API_MQTT_PASSWORD",
    ):
        monkeypatch.setenv(key, values[key])
    monkeypatch.setenv("ORCHARD_BROKER_PASSWD_FILE", str(tmp_path / "passwd"))
    monkeypatch.setenv("ORCHARD_DEMO", "false")
    # pydantic wraps the validator's PlaceholderSecretError in its ValidationError.
    with pytest.raises(ValidationError, match="placeholder secrets in device_secret"):
        BrokerInitSettings()
    monkeypatch.setenv("ORCHARD_DEMO", "true")
    assert BrokerInitSettings().demo


def _module_exists(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:  # a package: needs __main__
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return True


def test_service_commands_point_at_modules_that_exist() -> None:
    commands = {}
    for name, service in SERVICES.items():
        command = service.get("command")
        if command is None:
            continue
        assert command[:2] == ["python", "-m"], f"{name}: {command}"
        commands[name] = command[2]
    assert commands["ingest"] == "ingest" and commands["control"] == "control"
    assert commands["api"] == "api" and commands["simulator"] == "firmware_sim"
    missing = {name: module for name, module in commands.items() if not _module_exists(module)}
    assert missing == {}, f"services whose module has no entry point: {missing}"


def test_grafana_provisioning_matches_the_dashboards() -> None:
    grafana = SERVICES["grafana"]
    mounts = dict(bind_mounts(grafana))
    provisioning = PROJECT_ROOT / "config" / "grafana" / "provisioning"
    assert mounts["./config/grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "orchard.yaml").read_text())[
        "providers"
    ]
    assert mounts["./dashboards/json"] == provider["options"]["path"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert _VAR.fullmatch(env["GF_SECURITY_ADMIN_PASSWORD"])
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (PROJECT_ROOT / "dashboards" / "json" / Path(home).name).exists()
    variants = sorted((PROJECT_ROOT / "config" / "grafana" / "datasource-variants").glob("*.yaml"))
    assert len(variants) == 2
    for path in [provisioning / "datasources" / "orchard-influxdb.yaml", *variants]:
        text = path.read_text()
        (source,) = yaml.safe_load(text)["datasources"]
        assert source["uid"] == DEFAULT_DATASOURCE_UID and source["type"] == "influxdb"
        assert source["jsonData"]["version"] == "InfluxQL"
        # Every ${VAR} a provisioning file reads is in Grafana's environment.
        assert {m.group(1) for m in _VAR.finditer(text)} <= set(env), path.name
        secrets = source.get("secureJsonData", {})
        assert secrets and all(_VAR.search(v) for v in secrets.values())


# --- the broker, for real, from the compose configuration ------------------------------------


def _local_config(tmp_path: Path, port: int) -> Path:
    """mosquitto.conf as compose mounts it, container paths mapped to local ones."""
    mapping = {
        target: str((PROJECT_ROOT / source).resolve())
        for source, target in bind_mounts(SERVICES["mosquitto"])
    }
    for volume in SERVICES["mosquitto"]["volumes"]:
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            local = tmp_path / source
            local.mkdir()
            mapping[target] = str(local)
    text = (MOSQUITTO_CONF_DIR / "mosquitto.conf").read_text()
    for target in sorted(mapping, key=len, reverse=True):
        text = text.replace(target, mapping[target])
    assert not re.search(r"(^|\s)/mosquitto/", text, re.M), (
        "a path of mosquitto.conf is not mounted"
    )
    text = text.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    # Started as root, Mosquitto drops to the 'mosquitto' user; stay as the test's user.
    user = "root" if os.getuid() == 0 else os.environ.get("USER", "")
    path = tmp_path / "mosquitto.conf"
    path.write_text(f"user {user}\n{text}")
    return path


def _pub(port: int, user: str, password: str, topic: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-u",
            user,
            "-P",
            password,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            "{}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_compose_broker_config_runs_with_broker_init_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    conf = _local_config(tmp_path, port)
    passwd = tmp_path / "broker-auth" / "passwd"
    # A device provisioned earlier through the API, with its own password: must survive.
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "api-made-node", "own-password"], check=True
    )
    env = {
        "ORCHARD_DEMO": "false",
        "ORCHARD_DEVICE_SECRET": "s3cret-device",
        "ORCHARD_INGEST_MQTT_PASSWORD": "ingest-pw",
        "ORCHARD_CONTROL_MQTT_PASSWORD": "control-pw",
        "ORCHARD_API_MQTT_PASSWORD": "api-pw",
        "ORCHARD_BROKER_PASSWD_FILE": str(passwd),
        "ORCHARD_ORCHARD_FILE": str(PROJECT_ROOT / "config" / "orchard.toml"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    orchard = load_orchard(PROJECT_ROOT / "config" / "orchard.toml")
    written, kept = write_broker_passwords(BrokerInitSettings())
    assert written == 3 + len(orchard.all_nodes()) and kept == 1
    assert set(read_password_file(passwd)) == {
        "api-made-node",
        "orchard-ingest",
        "orchard-control",
        "orchard-api",
    } | {n for _, n in orchard.all_nodes()}

    broker = ManagedProcess(
        "mosquitto", [require_binary("mosquitto", "mosquitto"), "-c", str(conf)], tmp_path / "log"
    )
    broker.start()
    try:
        for _ in range(100):
            done = subprocess.run(
                [
                    "mosquitto_sub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-t",
                    "x",
                    "-C",
                    "1",
                    "-W",
                    "1",
                ],
                capture_output=True,
                text=True,
            )
            if "not authori" in done.stderr + done.stdout:
                break
        # The compose healthcheck, as written, passes against this broker.
        check = SERVICES["mosquitto"]["healthcheck"]["test"][1].replace("-p 1883", f"-p {port}")
        assert subprocess.run(["sh", "-c", check]).returncode == 0, broker.tail()
        block = orchard.blocks[0]
        node = block.sensor_nodes[0]
        farm = orchard.farm.id
        own = f"orchard/{farm}/{block.id}/{node}/telemetry"
        assert _pub(port, node, device_password("s3cret-device", node), own).returncode == 0
        assert _pub(port, "orchard-ingest", "ingest-pw", "orchard/x").returncode == 0
        assert (
            _pub(
                port,
                "api-made-node",
                "own-password",
                f"orchard/{farm}/{block.id}/api-made-node/status",
            ).returncode
            == 0
        )
        refused = _pub(port, node, "wrong-password", own)
        assert refused.returncode != 0 and "not authori" in refused.stderr
        assert broker.process is not None
        pid_file = tmp_path / "broker-auth" / "mosquitto.pid"
        assert pid_file.read_text().strip() == str(broker.process.pid)
    finally:
        broker.stop()
    assert "Error" not in broker.tail(), broker.tail()


def test_image_gets_pinned_runtime_dependencies_and_no_secrets() -> None:
    import tomllib

    lock = {
        re.split(r"[=\[]", line, maxsplit=1)[0].lower()
        for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    }
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    direct = {
        re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower()
        for d in pyproject["project"]["dependencies"]
    }
    assert direct - lock == set(), "runtime dependencies missing from requirements.lock"
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and ".venv" in ignored and "var" in ignored
    assert ".env" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()


def _password_matches(entry: str, password: str) -> bool:
    """Check a Mosquitto 2 ``$7$`` entry (PBKDF2-SHA512) against a plain password."""
    import base64
    import hashlib

    _, kind, iterations, salt, digest = entry.split("$")
    assert kind == "7", entry
    expected = base64.b64decode(digest)
    actual = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations), len(expected)
    )
    return actual == expected


def test_broker_init_rotates_secrets_and_keeps_provisioned_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "api-made-node", "own"], check=True
    )
    kept_entry = read_password_file(passwd)["api-made-node"]
    for key, value in {
        "ORCHARD_DEMO": "false",
        "ORCHARD_DEVICE_SECRET": "first-secret",
        "ORCHARD_INGEST_MQTT_PASSWORD": "ingest-1",
        "ORCHARD_CONTROL_MQTT_PASSWORD": "control-1",
        "ORCHARD_API_MQTT_PASSWORD": "api-1",
        "ORCHARD_BROKER_PASSWD_FILE": str(passwd),
        "ORCHARD_ORCHARD_FILE": str(PROJECT_ROOT / "config" / "orchard.toml"),
    }.items():
        monkeypatch.setenv(key, value)
    write_broker_passwords(BrokerInitSettings())
    first = read_password_file(passwd)
    monkeypatch.setenv("ORCHARD_INGEST_MQTT_PASSWORD", "ingest-2")
    assert write_broker_passwords(BrokerInitSettings())[1] == 1
    second = read_password_file(passwd)
    assert set(first) == set(second)
    assert second["api-made-node"] == kept_entry  # untouched, byte for byte
    assert _password_matches(first["orchard-ingest"], "ingest-1")
    assert _password_matches(second["orchard-ingest"], "ingest-2")
    assert not _password_matches(second["orchard-ingest"], "ingest-1")
    assert _password_matches(second["orchard-control"], "control-1")
    node = load_orchard(PROJECT_ROOT / "config" / "orchard.toml").blocks[0].sensor_nodes[0]
    assert _password_matches(second[node], device_password("first-secret", node))
    assert oct(passwd.stat().st_mode & 0o777) == "0o640"  # readable by the broker's group only
