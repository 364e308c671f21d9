"""Grafana dashboards as code for the orchard (``orchard dashboards build|check|push``).

The builders in :mod:`dashboards.boards` produce deterministic JSON committed under
``dashboards/json/``; Grafana loads those files through the provisioning in
``config/grafana/``, or ``orchard dashboards push`` sends them to a Grafana a farm
already runs.
"""

from __future__ import annotations

from pathlib import Path

JSON_DIR = Path(__file__).resolve().parent / "json"
