"""Identifiers for farms, blocks, nodes and valves.

Identifiers become MQTT topic levels and InfluxDB tag values, so they are held to a
small character set: nothing that could split a topic (``/``, ``+``, ``#``), break
line protocol (space, comma, ``=``) or need quoting in InfluxQL.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

ID_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$"
"""Lower-case letters, digits, ``-`` and ``_``; 1 to 32 characters; starts and ends alphanumeric."""

_ID_RE = re.compile(ID_PATTERN)

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


class InvalidIdentifierError(ValueError):
    """An identifier outside the allowed character set."""


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_id(value: object, what: str = "identifier") -> str:
    """Return ``value`` if it is a valid identifier, else raise with a message a user can act on."""
    if not is_valid_id(value):
        raise InvalidIdentifierError(
            f"invalid {what} {value!r}: use 1-32 characters a-z, 0-9, '-' or '_', "
            "starting and ending with a letter or digit"
        )
    assert isinstance(value, str)
    return value
