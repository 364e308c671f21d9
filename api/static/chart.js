// Backtest chart drawn as inline SVG: soil moisture with both triggers, then lanes for the
// irrigation runs and alarm episodes of the current thresholds and of the proposal.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawBacktestChart(container, data) {
  // data: {start, end, soil: [{t: Date, v}], now: {trigger, runs, alarms}, proposed: {...}}
  const W = 960, H = 330, L = 122, R = 16, T = 16;
  const plotBottom = 178;
  const lanes = [
    { y: 204, label: "irrigation now", key: "now", kind: "runs" },
    { y: 226, label: "irrigation proposed", key: "proposed", kind: "runs" },
    { y: 256, label: "alarms now", key: "now", kind: "alarms" },
    { y: 278, label: "alarms proposed", key: "proposed", kind: "alarms" },
  ];
  const t0 = data.start.getTime(), t1 = data.end.getTime();
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const values = data.soil.map((p) => p.v).concat([data.now.trigger, data.proposed.trigger])
    .filter((v) => typeof v === "number" && isFinite(v));
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!isFinite(lo)) { lo = 0; hi = 0.5; }
  const pad = Math.max((hi - lo) * 0.12, 0.01);
  lo -= pad; hi += pad;
  const y = (v) => plotBottom - ((v - lo) / (hi - lo)) * (plotBottom - T);

  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "Backtest: soil moisture, triggers, irrigation runs and alarms" });
  svg.appendChild(svgEl("rect", { x: L, y: T, width: W - L - R, height: plotBottom - T, fill: "#fbfcfa", stroke: "#dde2da" }));

  // y axis: soil moisture
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eef0ec" }));
    svg.appendChild(svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", fill: "#6b746b" }, v.toFixed(3)));
  }
  svg.appendChild(svgEl("text", { x: L - 50, y: T + 10, "text-anchor": "end", fill: "#6b746b" }, "soil m³/m³"));

  // x axis: days
  const day = 86400000;
  const step = (t1 - t0) / day > 16 ? 4 * day : (t1 - t0) / day > 8 ? 2 * day : day;
  for (let t = Math.ceil(t0 / day) * day; t <= t1; t += step) {
    svg.appendChild(svgEl("line", { x1: x(t), x2: x(t), y1: T, y2: 290, stroke: "#eef0ec" }));
    const d = new Date(t);
    svg.appendChild(svgEl("text", { x: x(t), y: 306, "text-anchor": "middle", fill: "#6b746b" },
      `${d.getUTCMonth() + 1}/${d.getUTCDate()}`));
  }

  // triggers
  const trig = [
    ["now", "#8a8f87", `trigger now ${fmt(data.now.trigger)}`],
    ["proposed", "#1f6fd1", `trigger proposed ${fmt(data.proposed.trigger)}`],
  ];
  trig.forEach(([key, color, label], i) => {
    const v = data[key].trigger;
    if (typeof v !== "number") return;
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: color,
      "stroke-width": 1.5, "stroke-dasharray": i ? "6 3" : "2 3", class: `trigger-${key}` }));
    svg.appendChild(svgEl("text", { x: W - R - 4, y: y(v) - 4, "text-anchor": "end", fill: color }, label));
  });

  // soil moisture line
  if (data.soil.length) {
    const d = data.soil.map((p, i) => `${i ? "L" : "M"}${x(p.t.getTime()).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
    svg.appendChild(svgEl("path", { d, fill: "none", stroke: "#2f6f3e", "stroke-width": 1.6, class: "soil-line" }));
  } else {
    svg.appendChild(svgEl("text", { x: (L + W) / 2, y: (T + plotBottom) / 2, "text-anchor": "middle", fill: "#6b746b" },
      "no soil moisture readings in this period"));
  }

  // lanes
  for (const lane of lanes) {
    const color = lane.key === "now" ? "#8a8f87" : "#1f6fd1";
    svg.appendChild(svgEl("text", { x: L - 6, y: lane.y + 4, "text-anchor": "end", fill: color, "font-size": 10 }, lane.label));
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: lane.y, y2: lane.y, stroke: "#eef0ec" }));
    const outcome = data[lane.key];
    if (lane.kind === "runs") {
      for (const run of outcome.runs) {
        const cx = x(new Date(run.at).getTime());
        const size = 4 + Math.min(6, run.depth_mm / 4);
        const tri = svgEl("path", { d: `M${cx},${lane.y - size}L${cx + size},${lane.y + size}L${cx - size},${lane.y + size}Z`,
          fill: color, class: `run run-${lane.key}` });
        tri.appendChild(svgEl("title", {}, `${run.at}: ${run.duration_min} min, ${run.depth_mm} mm, ${run.water_m3} m³`));
        svg.appendChild(tri);
      }
    } else {
      for (const a of outcome.alarms) {
        const xa = x(new Date(a.raised_at).getTime());
        const xb = x(a.cleared_at ? new Date(a.cleared_at).getTime() : t1);
        const sevColor = a.severity === "critical" || a.severity === "major" ? "#c0392b" : "#c98a00";
        const rect = svgEl("rect", { x: xa, y: lane.y - 6, width: Math.max(2, xb - xa), height: 12, rx: 2,
          fill: sevColor, opacity: lane.key === "now" ? 0.45 : 0.85, class: `alarm alarm-${lane.key}` });
        rect.appendChild(svgEl("title", {}, `${a.type} ${a.subject}: ${a.message} (${a.duration_h} h)`));
        svg.appendChild(rect);
      }
    }
  }
  container.replaceChildren(svg);
}

function fmt(v) {
  return typeof v === "number" ? (Math.abs(v) < 1 ? v.toFixed(3) : v.toFixed(1)) : "–";
}

window.drawBacktestChart = drawBacktestChart;
