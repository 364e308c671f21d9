"""Reading the dead-letter store (the ``dead_letter`` measurement in InfluxDB)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest.lines import DEAD_LETTER
from orchard.influx import SyncInfluxClient, quote_ident, quote_literal


@dataclass(frozen=True, slots=True)
class DeadLetter:
    time: str
    reason: str
    topic: str
    detail: str
    payload: str


def dead_letter_query(limit: int, reason: str | None = None) -> str:
    where = f" WHERE {quote_ident('reason')} = {quote_literal(reason)}" if reason else ""
    return (
        f"SELECT {quote_ident('reason')}, topic, detail, payload FROM {quote_ident(DEAD_LETTER)}"
        f"{where} ORDER BY time DESC LIMIT {int(limit)}"
    )


def read_dead_letters(
    client: SyncInfluxClient, limit: int = 20, reason: str | None = None
) -> list[DeadLetter]:
    """Newest first."""
    series = client.query_one(dead_letter_query(limit, reason), epoch=None)
    rows: list[dict[str, Any]] = series[0].rows() if series else []
    return [
        DeadLetter(
            time=str(row["time"]),
            reason=str(row.get("reason") or ""),
            topic=str(row.get("topic") or ""),
            detail=str(row.get("detail") or ""),
            payload=str(row.get("payload") or ""),
        )
        for row in rows
    ]


def dead_letter_counts(client: SyncInfluxClient) -> dict[str, int]:
    """Dead letters stored per reason, over all time."""
    series = client.query_one(
        f"SELECT sum({quote_ident('count')}) FROM {quote_ident(DEAD_LETTER)} "
        f"GROUP BY {quote_ident('reason')}"
    )
    return {s.tags.get("reason", ""): int(s.values[0][1]) for s in series if s.values}
