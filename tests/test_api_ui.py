"""The agronomists' page in headless Chromium: change a threshold after seeing its backtest."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api.auth import Role, create_token
from api.settings import ApiSettings
from api.testing import running_api, synthetic_telemetry
from control.alarms import Alarms
from control.harvest.lots import LotDraft, upsert_lot
from orchard.db import create_engine, init_db
from orchard.influx import SyncInfluxClient, quote_ident
from orchard.settings import CONFIG_DIR, InfluxSettings
from tests.conftest import LiveStack

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(tempfile.gettempdir()) / "orchard-agronomist-page.png"
FARM, BLOCK = "sunny-hill", "apple-east"


@pytest.fixture(scope="module")
def site(stack: LiveStack) -> Iterator[tuple[str, str, object, str]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make deps installs it)")
    database = f"ui_{uuid.uuid4().hex[:10]}"
    influx_settings = InfluxSettings(url=stack.influxd.url, database=database)
    tmp = Path(tempfile.mkdtemp(prefix="orchard-ui-"))
    settings = ApiSettings(
        demo=True,
        influx=influx_settings,
        mqtt=stack.mqtt("orchard-api"),
        state_url=f"sqlite:///{tmp / 'state.db'}",
        orchard_file=CONFIG_DIR / "orchard.toml",
        broker_passwd_file=tmp / "passwd",
    )
    engine = create_engine(settings.state_url)
    init_db(engine)
    _, token = create_token(engine, "maria", Role.agronomist)
    _, shop = create_token(engine, "shop", Role.operator)
    upsert_lot(
        engine,
        LotDraft(
            lot="apple-east-2026-w1",
            farm=FARM,
            block=BLOCK,
            season=date(2026, 4, 12),
            window_no=1,
            crop="apple",
            variety="gala",
            quantity_kg=24000.0,
            grade="A",
            in_band_share=0.9,
            window_start=date(2026, 9, 10),
            window_end=date(2026, 9, 24),
            title="Gala",
            description="East slope Gala",
            evidence={},
        ),
    )
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    nodes = [f"{BLOCK}-n0{i}" for i in range(1, 6)]
    with SyncInfluxClient(influx_settings) as influx:
        influx.create_database()
        influx.write(synthetic_telemetry(FARM, BLOCK, nodes, now - timedelta(days=3), 3, 60))
        Alarms(engine).raise_alarm(
            type="soil_dry",
            subject=BLOCK,
            farm=FARM,
            block=BLOCK,
            severity="major",
            message="soil moisture 0.16 below 0.165 for 2 h",
            value=0.16,
        )
        with running_api(settings) as url:
            yield url, token, engine, shop
        influx.query(f"DROP DATABASE {quote_ident(database)}", database=False)


def test_change_a_threshold_after_its_backtest(site: tuple[str, str, object, str]) -> None:
    url, token, _engine, _shop = site
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            page.fill("#token", token)
            page.click("#token-form button")
            page.wait_for_selector("#whoami:has-text('agronomist')")
            # Blocks at a glance, with the open alarm counted.
            card = page.locator(f".card[data-block='{BLOCK}']")
            card.wait_for()
            assert "1 · major" in card.locator(".open-alarms").inner_text()
            page.wait_for_selector("#th-table tr[data-key='soil_trigger']")
            assert page.is_disabled("#th-save")
            page.select_option("#th-days", "3")
            page.fill("input[data-key='soil_trigger']", "0.25")
            page.fill("#th-reason", "young trees: water earlier")
            page.click("#th-preview")
            page.wait_for_selector("#bt-chart svg path.soil-line", timeout=60_000)
            chart = page.locator("#bt-chart svg")
            assert chart.locator("line.trigger-proposed").count() == 1
            proposed_runs = chart.locator("path.run-proposed").count()
            current_runs = chart.locator("path.run-now").count()
            # A higher trigger irrigates at least as often over the same week.
            assert proposed_runs >= current_runs and proposed_runs > 0
            assert page.locator("#bt-differences li").count() >= 1
            assert page.is_enabled("#th-save")
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            page.click("#th-save")
            page.wait_for_selector("#message.ok:has-text('Saved soil_trigger')")
            page.wait_for_selector("#audit tbody tr:has-text('soil_trigger')")
            row = page.locator("#audit tbody tr").first
            assert "soil_trigger" in row.inner_text()
            assert "young trees: water earlier" in row.inner_text()
            assert "maria" in row.inner_text()
            assert "override" in page.locator("#th-table tr[data-key='soil_trigger']").inner_text()
            # Acknowledge the alarm from the page.
            page.click("#alarms button.ack")
            page.wait_for_selector("#alarms td:has-text('active ack')")
            assert errors == []
        finally:
            browser.close()


def test_grower_marks_a_ready_block_harvested(site: tuple[str, str, object, str]) -> None:
    url, _token, engine, _shop = site
    from control.harvest.tables import block_state
    from orchard.layout import load_orchard

    block = load_orchard(CONFIG_DIR / "orchard.toml").block("cherry-north")
    now = datetime.now(UTC)
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            block_state.insert().values(
                farm=FARM,
                block=block.id,
                season=block.bloom_date,
                state="ready",
                state_since=now,
                ready_on=now.date(),
                evidence={"state": "ready"},
                evaluated_at=now,
            )
        )
    _, grower = create_token(engine, "ana", Role.grower)  # type: ignore[arg-type]
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
            page.goto(url + "/")
            page.fill("#token", grower)
            page.click("#token-form button")
            page.wait_for_selector("#whoami:has-text('grower')")
            card = page.locator(".card[data-block='cherry-north']")
            card.locator("button.harvested").click()
            page.wait_for_selector(
                ".card[data-block='cherry-north'] dd.readiness:text-is('harvested')"
            )
            assert "final for the season" in dialogs[0]
            assert card.locator("button.harvested").count() == 0
            # Only ready blocks offer it, and a grower does not tune or acknowledge.
            assert page.locator("button.harvested").count() == 0
            assert page.is_hidden("#th-preview") and page.locator("#alarms button").count() == 0
            assert errors == []
        finally:
            browser.close()
    states = httpx.get(
        url + "/api/v1/blocks/cherry-north/readiness", headers={"Authorization": f"Bearer {grower}"}
    ).json()
    assert states["state"] == "harvested" and states["harvested_by"] == "ana"


def test_operator_publishes_and_corrects_a_listing(site: tuple[str, str, object, str]) -> None:
    url, _token, _engine, shop = site
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            page.fill("#token", shop)
            page.click("#token-form button")
            page.wait_for_selector("#whoami:has-text('operator')")
            row = page.locator("#listings tr[data-lot='apple-east-2026-w1']")
            row.wait_for()
            assert "draft" in row.inner_text()
            assert page.is_hidden("#th-preview")  # operators do not tune thresholds
            row.locator("button:has-text('published')").click()
            page.wait_for_selector(
                "#listings tr[data-lot='apple-east-2026-w1'] td:text-is('published')"
            )
            qty = page.locator("#listings tr[data-lot='apple-east-2026-w1'] input")
            qty.fill("21500")
            qty.dispatch_event("change")

            def stored() -> dict[str, object]:
                r = httpx.get(
                    url + "/api/v1/listings/apple-east-2026-w1",
                    headers={"Authorization": f"Bearer {shop}"},
                )
                return r.json()["listing"]  # type: ignore[no-any-return]

            page.wait_for_timeout(300)
            deadline = time.monotonic() + 10
            while stored()["quantity_kg"] != 21500 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert stored()["quantity_kg"] == 21500 and stored()["state"] == "published"
            assert errors == []
        finally:
            browser.close()
