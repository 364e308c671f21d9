// The agronomists' page: plain JS over the orchard API. Every data call sends the pasted
// token; nothing is built, nothing is fetched from outside this server.
"use strict";

const state = { token: localStorage.getItem("orchard-token") || "", role: null, orchard: null,
  thresholds: null, previewed: null, dataTime: {}, perms: new Set() };
// What the token may do comes from /whoami (the server's permission table), not from role names.
const may = (permission) => state.perms.has(permission);

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return node;
}

function say(text, ok) {
  const m = $("#message");
  m.textContent = text;
  m.className = ok ? "message ok" : "message";
  m.hidden = !text;
}

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.detail;
    // A 422 from request validation lists its problems: say each as "field: what is wrong".
    const say = (d) => (Array.isArray(d)
      ? d.map((e) => `${(e.loc || []).filter((p) => p !== "body" && p !== "query").join(".")}: ${e.msg}`).join("; ")
      : JSON.stringify(d));
    super(typeof detail === "string" ? detail : detail ? say(detail) : `HTTP ${status}: ${String(body).slice(0, 200)}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method: options.method || "GET", headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

const when = (iso) => (iso ? iso.replace("T", " ").slice(0, 16) : "–");
const num = (v, digits = 2) => (typeof v === "number" ? v.toFixed(digits) : "–");

// --- overview -------------------------------------------------------------------------------

async function loadOverview() {
  const rows = await api("/api/v1/overview");
  // The newest control tick per block: backtests end there (a demo replays past seasons).
  for (const b of rows) if (b.state && b.state.time) state.dataTime[b.block] = b.state.time;
  const cards = rows.map((b) => {
    const s = b.state || {};
    return el("div", { class: `card ${b.worst_severity ? "sev-" + b.worst_severity : ""}`, "data-block": b.block },
      el("h4", {}, b.name || b.block),
      el("div", { class: "muted small" }, `${b.block} · ${b.crop}`),
      el("dl", {},
        el("dt", {}, "soil moisture"), el("dd", {}, `${num(s.soil_moisture, 3)} (trigger ${num(s.trigger, 3)})`),
        el("dt", {}, "temperature"), el("dd", {}, `${num(s.temperature, 1)} °C`),
        el("dt", {}, "VPD"), el("dd", {}, `${num(s.vpd, 2)} kPa`),
        el("dt", {}, "healthy nodes"), el("dd", {}, s.healthy_nodes ?? "–"),
        el("dt", {}, "open alarms"), el("dd", { class: "open-alarms" },
          b.open_alarms ? el("span", { class: `badge ${b.worst_severity}` }, `${b.open_alarms} · ${b.worst_severity}`) : "none"),
        el("dt", {}, "readiness"), el("dd", { class: "readiness" }, b.readiness ? `${b.readiness.replace("_", " ")}${b.readiness_forecast ? " · " + b.readiness_forecast : ""}` : "–"),
      ),
      may("harvest:write") && (b.readiness === "ready" || b.readiness === "ready_soon")
        ? el("button", { type: "button", class: "harvested", onclick: () => markHarvested(b.block) }, "Mark harvested")
        : null);
  });
  $("#overview").replaceChildren(...cards);
}

async function markHarvested(block) {
  if (!confirm(`Mark ${block} harvested? This is final for the season and clears its readiness alarm.`)) return;
  try {
    const row = await api(`/api/v1/blocks/${encodeURIComponent(block)}/readiness/harvested`, { method: "POST" });
    say(`${block} marked harvested by ${row.harvested_by}.`, true);
    await Promise.all([loadOverview(), loadAlarms()]);
  } catch (err) {
    say(err.message);
  }
}

// --- thresholds, backtest, audit ----------------------------------------------------------------

function proposedValues() {
  const out = {};
  for (const input of document.querySelectorAll("#th-table input[data-key]")) {
    const raw = input.value.trim();
    const current = state.thresholds.values[input.dataset.key];
    if (raw === "") continue;
    if (raw.toLowerCase() === "default") { if (current.source === "override") out[input.dataset.key] = null; continue; }
    const v = Number(raw);
    out[input.dataset.key] = Number.isFinite(v) ? v : raw;
    if (Number.isFinite(v) && v === current.value) delete out[input.dataset.key];
  }
  return out;
}

function markChanged() {
  const proposal = proposedValues();
  for (const tr of document.querySelectorAll("#th-table tbody tr")) {
    tr.classList.toggle("changed", tr.dataset.key in proposal);
  }
  // Any edit invalidates the preview: the saved values must be the ones backtested.
  state.previewed = null;
  $("#th-save").disabled = true;
}

async function loadThresholds() {
  const block = $("#th-block").value;
  if (!block) return;
  const eff = await api(`/api/v1/blocks/${encodeURIComponent(block)}/thresholds`);
  state.thresholds = eff;
  const rows = Object.values(eff.values).map((t) =>
    el("tr", { "data-key": t.key },
      el("td", { title: t.description }, t.key),
      el("td", { class: "num" }, `${t.value}${t.unit ? " " + t.unit : ""}`),
      el("td", { class: t.source === "override" ? "src-override" : "", title: t.detail }, t.source.replace("_", " ")),
      el("td", { class: "muted" }, `${t.allowed_min}–${t.allowed_max}`),
      el("td", {}, el("input", { "data-key": t.key, placeholder: t.source === "override" ? "default?" : "", inputmode: "decimal",
        "aria-label": `proposed ${t.key}`, oninput: markChanged })),
    ));
  $("#th-table tbody").replaceChildren(...rows);
  $("#backtest").hidden = true;
  state.previewed = null;
  $("#th-save").disabled = true;
  await loadAudit();
}

async function loadAudit() {
  const block = $("#th-block").value;
  const entries = await api(`/api/v1/blocks/${encodeURIComponent(block)}/thresholds/audit?limit=20`);
  const rows = entries.map((a) => el("tr", {},
    el("td", {}, when(a.ts)), el("td", {}, a.actor), el("td", {}, a.key),
    el("td", { class: "num" }, `${a.effective_before ?? "–"} → ${a.effective_after ?? "–"}${a.new_value === null ? " (default)" : ""}`),
    el("td", {}, a.reason || "")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no changes yet")));
  $("#audit tbody").replaceChildren(...rows);
}

async function previewBacktest() {
  const block = $("#th-block").value;
  const overrides = proposedValues();
  if (!Object.keys(overrides).length) { say("Enter a proposed value first (or 'default' to drop an override)."); return; }
  const days = Number($("#th-days").value);
  const end = new Date(state.dataTime[block] || Date.now());
  const start = new Date(end.getTime() - days * 86400000);
  $("#th-preview").disabled = true;
  say("Replaying the stored readings…", true);
  try {
    const [bt, hist] = await Promise.all([
      api(`/api/v1/blocks/${encodeURIComponent(block)}/backtest`, { method: "POST",
        body: { overrides, start: start.toISOString(), end: end.toISOString(), raw: $("#th-raw").checked } }),
      api(`/api/v1/blocks/${encodeURIComponent(block)}/readings/history?field=soil_moisture&aggregate=mean` +
        `&window=${Math.max(60, Math.ceil(days * 86400 / 400))}s&start=${encodeURIComponent(start.toISOString())}` +
        `&end=${encodeURIComponent(end.toISOString())}`),
    ]);
    const soil = (hist.series[0]?.points || []).map((p) => ({ t: new Date(p.time), v: p.value }));
    const side = (o) => ({ trigger: o.thresholds.soil_trigger, runs: o.irrigation, alarms: o.alarms });
    drawBacktestChart($("#bt-chart"), { start, end, soil, now: side(bt.current), proposed: side(bt.proposed) });
    $("#bt-differences").replaceChildren(...bt.differences.map((d) => el("li", {}, d)));
    const summary = [
      ["", "current", "proposed"],
      ["irrigation runs", bt.current.irrigation_count, bt.proposed.irrigation_count],
      ["water (m³)", bt.current.water_m3, bt.proposed.water_m3],
      ["alarms", bt.current.alarms.length, bt.proposed.alarms.length],
      ["ready date", bt.current.readiness_date || "–", bt.proposed.readiness_date || "–"],
    ];
    $("#bt-summary").replaceChildren(...summary.map((r, i) => el("tr", {},
      ...r.map((c, j) => el(i === 0 || j === 0 ? "th" : "td", { class: j ? "num" : "" }, c)))));
    $("#bt-caveat").textContent = `${bt.readings} values from ${bt.nodes} nodes replayed in ` +
      `${(bt.query_s + bt.replay_s).toFixed(2)} s on ${bt.step_note}. ${bt.caveat}`;
    $("#backtest").hidden = false;
    state.previewed = JSON.stringify(overrides);
    $("#th-save").disabled = false;
    say("");
  } catch (err) {
    say(err.message);
  } finally {
    $("#th-preview").disabled = false;
  }
}

async function saveOverrides() {
  const overrides = proposedValues();
  if (state.previewed !== JSON.stringify(overrides)) { say("The values changed since the preview: preview again."); return; }
  const block = $("#th-block").value;
  try {
    await api(`/api/v1/blocks/${encodeURIComponent(block)}/thresholds`, { method: "PATCH",
      body: { values: overrides, reason: $("#th-reason").value } });
    say(`Saved ${Object.keys(overrides).join(", ")} for ${block}.`, true);
    $("#th-reason").value = "";
    await loadThresholds();
  } catch (err) {
    say(err.message);
  }
}

// --- alarms ----------------------------------------------------------------------------------

async function loadAlarms() {
  const alarms = await api(`/api/v1/alarms?state=${$("#alarm-state").value}&limit=100`);
  const canWrite = may("alarms:write");
  const rows = alarms.map((a) => el("tr", { "data-alarm": a.id },
    el("td", {}, when(a.started_at)),
    el("td", {}, el("span", { class: `badge ${a.severity}` }, a.severity)),
    el("td", {}, a.type), el("td", {}, a.subject), el("td", {}, a.message),
    el("td", {}, a.state.replace("_", " ")),
    el("td", {},
      canWrite && !a.acknowledged_at ? el("button", { type: "button", class: "ack", onclick: () => alarmAction(a.id, "ack") }, "Acknowledge") : null,
      " ",
      canWrite && a.state.startsWith("active") ? el("button", { type: "button", class: "secondary", onclick: () => alarmAction(a.id, "clear") }, "Clear") : null)));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no alarms")));
  $("#alarms tbody").replaceChildren(...rows);
}

async function alarmAction(id, action) {
  try {
    const body = action === "clear" ? { reason: "cleared from the agronomists' page" } : {};
    await api(`/api/v1/alarms/${id}/${action}`, { method: "POST", body });
    await Promise.all([loadAlarms(), loadOverview()]);
  } catch (err) {
    say(err.message);
  }
}

// --- listings --------------------------------------------------------------------------------

const NEXT = { draft: ["published", "withdrawn"], published: ["sold_out", "withdrawn"] };

async function loadListings() {
  const lots = await api("/api/v1/listings?limit=100");
  const canWrite = may("listings:write");
  const canCorrect = may("listings:quantity");
  const rows = lots.map((l) => el("tr", { "data-lot": l.lot },
    el("td", {}, l.lot), el("td", {}, l.block), el("td", {}, l.grade),
    el("td", {}, `${l.harvest_window.start} – ${l.harvest_window.end}`),
    el("td", { class: "num" }, canCorrect && NEXT[l.state]
      ? el("input", { value: String(l.quantity_kg), inputmode: "decimal", "aria-label": `quantity of ${l.lot}`,
          onchange: (e) => listingQuantity(l.lot, e.target.value) })
      : `${l.quantity_kg}`),
    el("td", {}, l.state.replace("_", " ")),
    el("td", {}, ...(canWrite ? (NEXT[l.state] || []).map((s) =>
      el("button", { type: "button", class: "secondary", onclick: () => listingState(l.lot, s) }, s.replace("_", " "))) : []))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no listings yet")));
  $("#listings tbody").replaceChildren(...rows);
}

async function listingState(lot, target) {
  try {
    await api(`/api/v1/listings/${encodeURIComponent(lot)}/state`, { method: "POST", body: { state: target } });
    await loadListings();
  } catch (err) { say(err.message); }
}

async function listingQuantity(lot, value) {
  try {
    await api(`/api/v1/listings/${encodeURIComponent(lot)}/quantity`, { method: "PATCH", body: { quantity_kg: Number(value) } });
    await loadListings();
  } catch (err) { say(err.message); }
}

// --- start -----------------------------------------------------------------------------------

async function start() {
  if (!state.token) { say("Paste an API token (make up prints where to find the admin token).", true); return; }
  try {
    const me = await api("/api/v1/whoami");
    state.role = me.role;
    state.perms = new Set(me.permissions);
    $("#whoami").textContent = `${me.name} · ${me.role}`;
    const blocks = await api("/api/v1/blocks");
    const farms = await api("/api/v1/farms");
    $("#farm-name").textContent = farms[0]?.name || "";
    const select = $("#th-block");
    select.replaceChildren(...blocks.map((b) => el("option", { value: b.id }, `${b.id} · ${b.crop}`)));
    const canTune = may("thresholds:write") && may("backtest:run");
    // Only those who may tune see the proposal column, the reason and the buttons.
    $("#th-actions").hidden = !canTune;
    $("#th-period").hidden = !canTune;
    $("#th-table").classList.toggle("read-only", !canTune);
    say("");
    await Promise.all([loadOverview(), loadThresholds(), loadAlarms(), loadListings()]);
  } catch (err) {
    say(err.status === 401 ? "That token is not valid (or was revoked)." : err.message);
  }
}

$("#token").value = state.token;
$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("#token").value.trim();
  localStorage.setItem("orchard-token", state.token);
  start();
});
$("#th-block").addEventListener("change", () => loadThresholds().catch((e) => say(e.message)));
$("#alarm-state").addEventListener("change", () => loadAlarms().catch((e) => say(e.message)));
$("#th-preview").addEventListener("click", previewBacktest);
$("#th-save").addEventListener("click", saveOverrides);
start();
