"""MQTT topic names: one hierarchy ``orchard/{farm}/{block}/{node}/{kind}``.

=========  =========================  ======  =======  ==========================
kind       direction                  QoS     retain   payload model
=========  =========================  ======  =======  ==========================
telemetry  device -> ingest           1       no       :class:`orchard.models.Telemetry`
status     device -> ingest           1       yes      :class:`orchard.models.Status`
command    control -> valve node      1       no       :class:`orchard.models.ValveCommand`
ack        valve node -> control      1       no       :class:`orchard.models.ValveAck`
=========  =========================  ======  =======  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orchard.ids import check_id, is_valid_id

ROOT = "orchard"
INGEST_SHARE_GROUP = "ingest"


class Kind(StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    COMMAND = "command"
    ACK = "ack"


@dataclass(frozen=True, slots=True)
class NodeAddress:
    farm: str
    block: str
    node: str

    def topic(self, kind: Kind) -> str:
        return f"{ROOT}/{self.farm}/{self.block}/{self.node}/{kind.value}"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    address: NodeAddress
    kind: Kind


class TopicError(ValueError):
    """A topic outside the orchard hierarchy."""


def node_topic(farm: str, block: str, node: str, kind: Kind) -> str:
    check_id(farm, "farm id")
    check_id(block, "block id")
    check_id(node, "node id")
    return f"{ROOT}/{farm}/{block}/{node}/{kind.value}"


def telemetry_topic(farm: str, block: str, node: str) -> str:
    return node_topic(farm, block, node, Kind.TELEMETRY)


def status_topic(farm: str, block: str, node: str) -> str:
    return node_topic(farm, block, node, Kind.STATUS)


def command_topic(farm: str, block: str, node: str) -> str:
    return node_topic(farm, block, node, Kind.COMMAND)


def ack_topic(farm: str, block: str, node: str) -> str:
    return node_topic(farm, block, node, Kind.ACK)


def subscription(kind: Kind, farm: str = "+") -> str:
    """Wildcard filter for one kind of message, for every node (of one farm, or all)."""
    return f"{ROOT}/{farm}/+/+/{kind.value}"


def shared_subscription(kind: Kind, group: str = INGEST_SHARE_GROUP, farm: str = "+") -> str:
    """Shared subscription so several ingest processes split the load with no duplicates."""
    return f"$share/{group}/{subscription(kind, farm)}"


_KINDS = {k.value: k for k in Kind}


def parse_topic(topic: str) -> ParsedTopic:
    """Split a topic into its address and kind, or raise :class:`TopicError` saying why."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT:
        raise TopicError(f"topic {topic!r} is not orchard/{{farm}}/{{block}}/{{node}}/{{kind}}")
    _, farm, block, node, kind = parts
    for value, what in ((farm, "farm"), (block, "block"), (node, "node")):
        if not is_valid_id(value):
            raise TopicError(f"topic {topic!r} has an invalid {what} id {value!r}")
    try:
        parsed_kind = _KINDS[kind]
    except KeyError:
        raise TopicError(f"topic {topic!r} has unknown kind {kind!r}") from None
    return ParsedTopic(NodeAddress(farm, block, node), parsed_kind)
