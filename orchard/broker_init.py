"""Write the broker's password file from the deployment's secrets (compose ``broker-init``).

``python -m orchard.broker_init`` reads the service passwords and the farm's device
secret from the environment (``.env`` in compose), derives every device password of
the orchard file, hashes them with ``mosquitto_passwd`` and writes the file Mosquitto
loads. Entries it does not manage (devices provisioned through the API with their own
passwords) are kept, so re-running it after editing the orchard file or rotating a
secret never cuts off a provisioned device. Placeholder secrets are refused outside
demo mode, like every service.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, SecretStr

from orchard.broker import (
    device_password,
    read_password_file,
    write_hashed_password_file,
    write_password_file,
)
from orchard.layout import load_orchard
from orchard.logs import setup_logging
from orchard.settings import OrchardSettings

log = logging.getLogger("orchard.broker_init")


class BrokerInitSettings(OrchardSettings):
    """``ORCHARD_DEVICE_SECRET``, ``ORCHARD_INGEST_MQTT_PASSWORD``, ... (see .env.example)."""

    device_secret: SecretStr
    ingest_mqtt_password: SecretStr
    control_mqtt_password: SecretStr
    api_mqtt_password: SecretStr
    broker_passwd_file: Path = Field(description="The password file Mosquitto loads")


def managed_accounts(settings: BrokerInitSettings) -> dict[str, str]:
    """Plain passwords of the service accounts and of every device of the orchard file."""
    accounts = {
        "orchard-ingest": settings.ingest_mqtt_password.get_secret_value(),
        "orchard-control": settings.control_mqtt_password.get_secret_value(),
        "orchard-api": settings.api_mqtt_password.get_secret_value(),
    }
    secret = settings.device_secret.get_secret_value()
    for _, node in load_orchard(settings.orchard_file).all_nodes():
        accounts[node] = device_password(secret, node)
    return accounts


def write_broker_passwords(settings: BrokerInitSettings) -> tuple[int, int]:
    """Rewrite the file; returns (managed accounts written, other entries kept)."""
    accounts = managed_accounts(settings)
    with tempfile.TemporaryDirectory(prefix="orchard-broker-init-") as tmp:
        # One mosquitto_passwd run hashes them all (one process per account is slow
        # for a farm of a thousand nodes).
        hashed_path = Path(tmp) / "passwd"
        write_password_file(hashed_path, accounts)
        hashed = read_password_file(hashed_path)
    kept = {
        user: entry
        for user, entry in read_password_file(settings.broker_passwd_file).items()
        if user not in hashed
    }
    write_hashed_password_file(settings.broker_passwd_file, {**kept, **hashed})
    return len(hashed), len(kept)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchard.broker_init", description=__doc__)
    parser.parse_args(list(argv))
    settings = BrokerInitSettings()  # type: ignore[call-arg]
    setup_logging(settings.log_level, settings.log_json)
    written, kept = write_broker_passwords(settings)
    log.info(
        "wrote %d accounts (services and the orchard's devices) to %s; kept %d other entries",
        written,
        settings.broker_passwd_file,
        kept,
    )
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
