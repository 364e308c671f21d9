"""Ingest: every reading from MQTT into InfluxDB, validated, batched, never lost.

The one path from the broker to storage. See ``docs/ingest.md`` for the guarantees,
the configuration, the dead-letter store and the metrics.
"""

from ingest.lines import status_line, telemetry_line_protocol, telemetry_lines

__all__ = ["status_line", "telemetry_line_protocol", "telemetry_lines"]
