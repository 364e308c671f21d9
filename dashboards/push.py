"""Send the dashboards to a Grafana a farm already runs, through its HTTP API.

Uses grafana-client. The dashboards go into one folder (created if missing) and
replace earlier versions with the same uid; their datasource variable defaults to the
InfluxDB datasource the farm names (its uid), so no panel needs editing.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError

from dashboards.grafana import DATASOURCE_VAR, JSON

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushTarget:
    url: str
    """Grafana base URL; ``https://user:password@host/`` also works (basic auth)."""
    token: str | None = None
    """Service account token (preferred over a password)."""
    folder_uid: str = "orchard"
    folder_title: str = "Orchard"
    datasource_uid: str | None = None
    """uid of the farm's InfluxDB (InfluxQL) datasource; default: the provisioned one."""
    timeout_s: float = 10.0


def dashboard_payload(board: JSON, target: PushTarget, message: str) -> JSON:
    """The body of ``POST /api/dashboards/db`` for one dashboard."""
    body = copy.deepcopy(board)
    body.pop("id", None)  # Grafana matches on uid; a stale numeric id would be rejected
    if target.datasource_uid:
        for variable in body.get("templating", {}).get("list", []):
            if variable.get("name") == DATASOURCE_VAR and variable.get("type") == "datasource":
                variable["current"] = {
                    "selected": False,
                    "text": target.datasource_uid,
                    "value": target.datasource_uid,
                }
    return {
        "dashboard": body,
        "folderUid": target.folder_uid,
        "message": message,
        "overwrite": True,
    }


def ensure_folder(api: GrafanaApi, target: PushTarget) -> None:
    try:
        api.folder.get_folder(target.folder_uid)  # type: ignore[no-untyped-call]
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        log.info("creating Grafana folder %s (%s)", target.folder_title, target.folder_uid)
        api.folder.create_folder(target.folder_title, uid=target.folder_uid)  # type: ignore[no-untyped-call]


def push(
    boards: Iterable[JSON], target: PushTarget, message: str = "orchard dashboards"
) -> list[str]:
    """Upload every board; returns the URLs Grafana reports for them."""
    api = GrafanaApi.from_url(target.url, credential=target.token, timeout=target.timeout_s)
    ensure_folder(api, target)
    urls: list[str] = []
    for board in boards:
        result = api.dashboard.update_dashboard(dashboard_payload(board, target, message))
        url = str((result or {}).get("url", board["uid"]))
        log.info("pushed %s -> %s", board["uid"], url)
        urls.append(url)
    return urls
