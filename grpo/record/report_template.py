"""The page `grpo report` writes: HTML, CSS and a small SVG line plotter, all inline.

`grpo.record.report` fills two markers: __TITLE__ (HTML-escaped text) and __DATA__ (JSON with `<`,
`>` and `&` escaped, inside a `<script type="application/json">` block). The script reads
that JSON and builds the page with createElement / textContent only, never innerHTML, so
model output is always shown as text. No file, font or script is fetched: the page works
offline and from a file:// URL.

Data shape (see grpo.record.report.build_data): {title, summary: [[label, value]], notes: [str],
plots: [{id, title, series: [{name, x: [step], y: [value|null]}]}], reward_names: [str],
samples: [{step, example_id, question, answer, completion, finish_reason, reward, advantage, episode,
rewards: {name: value|null}}], config: str}.
"""

TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<link rel="icon" href="data:,">  <!-- no favicon request, even from file:// -->
<style>
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
         max-width: 1400px; padding: 0 16px 40px; color: #222; background: #fafafa; }
  h1 { font-size: 20px; margin: 16px 0 4px; }
  h2 { font-size: 16px; margin: 24px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
  .chips span { display: inline-block; background: #eef2f7; border-radius: 4px; padding: 2px 8px;
                margin: 2px 6px 2px 0; }
  .note { color: #555; margin: 4px 0; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
  figure { margin: 0; background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px; }
  figcaption { font-weight: 600; margin-bottom: 4px; }
  svg.plot { width: 100%; height: auto; display: block; }
  svg.plot text { font-size: 10px; fill: #555; }
  .legend span { margin-right: 12px; white-space: nowrap; font-size: 12px; }
  .legend i { display: inline-block; width: 12px; height: 3px; margin: 0 4px 3px 0; vertical-align: middle; }
  .readout { font-size: 12px; color: #333; min-height: 1.4em; font-variant-numeric: tabular-nums; }
  .filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 8px 0; }
  .filters input[type=number] { width: 90px; }
  .filters input[type=search] { width: 260px; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { border: 1px solid #e3e3e3; padding: 4px 6px; vertical-align: top; text-align: left; }
  th { background: #f0f0f0; position: sticky; top: 0; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.pos { background: #e9f7ec; } td.neg { background: #fbeaea; }
  td pre { margin: 0; white-space: pre-wrap; word-break: break-word; max-height: 240px; overflow: auto;
           font: 12px/1.35 ui-monospace, SFMono-Regular, Menlo, monospace; }
  td.q div { max-height: 120px; overflow: auto; font-size: 12px; }
  div.turn.reply { background: #eef3fb; border-left: 3px solid #6b8fd6; padding: 2px 6px; margin: 2px 0; }
  div.turn .who { font-size: 11px; color: #44598a; font-weight: 600; }
  td.q b { font-weight: 600; }
  #config { background: #fff; border: 1px solid #e3e3e3; padding: 8px; overflow: auto; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div id="summary" class="chips"></div>
<h2>Training curves</h2>
<div id="notes"></div>
<div id="plots" class="grid"></div>
<h2>Sampled completions</h2>
<div class="filters">
  <label>step from <input id="step-min" type="number"></label>
  <label>to <input id="step-max" type="number"></label>
  <label>reward at least <input id="reward-min" type="number" step="any"></label>
  <label>search <input id="search" type="search" placeholder="question, answer or completion"></label>
  <button id="reset" type="button">reset</button>
  <span id="row-count"></span>
</div>
<table id="samples"><thead><tr id="samples-head"></tr></thead><tbody></tbody></table>
<h2>Run</h2>
<details><summary>config.yaml</summary><pre id="config"></pre></details>
<script type="application/json" id="report-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("report-data").textContent);
const SVG_NS = "http://www.w3.org/2000/svg";  // a namespace name, never fetched
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const $ = id => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v) {
  if (v === null || v === undefined) return "\u2013";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return String(+v.toPrecision(4));
}

// About n round ticks (1, 2, 2.5, 5 x 10^k apart) covering [lo, hi].
function ticks(lo, hi, n, integer) {
  const span = hi - lo;
  const mag = Math.pow(10, Math.floor(Math.log10(span / n)));
  let step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => span / s <= n);
  if (integer) step = Math.max(1, Math.round(step));
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

// Index of the x nearest to `x` in the sorted array xs.
function nearest(xs, x) {
  let lo = 0, hi = xs.length - 1;
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid; else hi = mid; }
  return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
}

// One line plot: a figure with an SVG (one <path> per series, nulls break the line),
// a legend and a readout of the values at the step under the pointer.
function linePlot(spec) {
  const W = 440, H = 240, L = 54, R = 12, T = 10, B = 28;
  const xs = spec.series.flatMap(s => s.x);
  const ys = spec.series.flatMap(s => s.y.filter(v => v !== null));
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 0.5; y0 -= pad; y1 += pad; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => T + (y1 - y) / (y1 - y0) * (H - T - B);
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img", "aria-label": spec.title});
  for (const t of ticks(y0, y1, 5, false)) {
    svg.append(svgEl("line", {x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: "#eee"}));
    svg.append(svgEl("text", {x: L - 4, y: sy(t) + 3, "text-anchor": "end"}, fmt(t)));
  }
  for (const t of ticks(x0, x1, 6, true)) {
    svg.append(svgEl("line", {x1: sx(t), x2: sx(t), y1: H - B, y2: H - B + 4, stroke: "#999"}));
    svg.append(svgEl("text", {x: sx(t), y: H - B + 15, "text-anchor": "middle"}, fmt(t)));
  }
  svg.append(svgEl("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#999"}));
  svg.append(svgEl("text", {x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle"}, "step"));
  const legend = el("div", {class: "legend"});
  spec.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    let d = "", pen = "M", n = 0;
    s.x.forEach((x, j) => {
      if (s.y[j] === null) { pen = "M"; return; }
      d += `${pen}${sx(x).toFixed(1)},${sy(s.y[j]).toFixed(1)}`;
      pen = "L"; n++;
    });
    svg.append(svgEl("path", {d, fill: "none", stroke: color, "stroke-width": 1.5,
                              "data-series": s.name, "data-points": n}));
    if (n <= 40) s.x.forEach((x, j) => {  // few points (e.g. evaluations): mark each one
      if (s.y[j] !== null) svg.append(svgEl("circle", {cx: sx(x), cy: sy(s.y[j]), r: 2.5, fill: color}));
    });
    const item = el("span");
    item.append(el("i", {style: `background:${color}`}), document.createTextNode(s.name));
    legend.append(item);
  });
  const cursor = svgEl("line", {y1: T, y2: H - B, stroke: "#bbb", visibility: "hidden"});
  svg.append(cursor);
  const readout = el("div", {class: "readout"});
  svg.addEventListener("mousemove", ev => {
    const box = svg.getBoundingClientRect();
    const x = x0 + ((ev.clientX - box.left) * W / box.width - L) / (W - L - R) * (x1 - x0);
    const parts = spec.series.map(s => {
      const j = nearest(s.x, x);
      return {step: s.x[j], text: `${s.name} ${fmt(s.y[j])}`};
    });
    cursor.setAttribute("x1", sx(parts[0].step)); cursor.setAttribute("x2", sx(parts[0].step));
    cursor.setAttribute("visibility", "visible");
    readout.textContent = `step ${parts[0].step}: ` + parts.map(p => p.text).join("   ");
  });
  svg.addEventListener("mouseleave", () => cursor.setAttribute("visibility", "hidden"));
  const fig = el("figure", {id: `plot-${spec.id}`});
  fig.append(el("figcaption", {}, spec.title), svg, legend, readout);
  return fig;
}

function numCell(v, signed) {
  const td = el("td", {class: "num"}, fmt(v));
  if (signed && v !== null && v !== 0) td.classList.add(v > 0 ? "pos" : "neg");
  return td;
}

function sampleRow(s) {
  const tr = el("tr");
  tr.append(el("td", {class: "num"}, String(s.step)), numCell(s.reward, false), numCell(s.advantage, true));
  for (const name of DATA.reward_names) tr.append(numCell(s.rewards ? s.rewards[name] ?? null : null, false));
  tr.append(el("td", {}, s.finish_reason ?? ""));
  const q = el("td", {class: "q"});
  const qd = el("div", {}, s.question ?? "");
  const gold = el("div");
  gold.append(el("b", {}, "gold: "), document.createTextNode(s.answer ?? ""));
  q.append(qd, gold, el("div", {}, `id ${s.example_id ?? ""}`));
  const c = el("td");
  if (s.episode) {  // a multi-turn episode: the model's turns, and tool / environment replies apart
    for (const m of s.episode) {
      const who = m.role === "assistant" ? "" : `${m.name ?? m.role}${m.error ? " (error: " + m.error + ")" : ""}`;
      const turn = el("div", {class: m.role === "assistant" ? "turn" : "turn reply"});
      if (who) turn.append(el("div", {class: "who"}, who));
      turn.append(el("pre", {}, m.content ?? ""));
      c.append(turn);
    }
  } else {
    c.append(el("pre", {}, s.completion ?? ""));
  }
  tr.append(q, c);
  return tr;
}

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" || isNaN(Number(v)) ? null : Number(v);
}

function buildTable() {
  const head = $("samples-head");
  for (const name of ["step", "reward", "advantage", ...DATA.reward_names, "finish", "question / gold answer",
                      "completion"]) head.append(el("th", {}, name));
  const body = document.querySelector("#samples tbody");
  const rows = DATA.samples.map(s => {
    const tr = sampleRow(s);
    body.append(tr);
    const hay = [s.question, s.answer, s.completion, s.example_id].join("\n").toLowerCase();
    return {tr, s, hay};
  });
  const apply = () => {
    const lo = numberOrNull("step-min"), hi = numberOrNull("step-max"), rmin = numberOrNull("reward-min");
    const q = $("search").value.trim().toLowerCase();
    let shown = 0;
    for (const {tr, s, hay} of rows) {
      const ok = (lo === null || s.step >= lo) && (hi === null || s.step <= hi)
        && (rmin === null || (s.reward !== null && s.reward >= rmin)) && (!q || hay.includes(q));
      tr.hidden = !ok;
      if (ok) shown++;
    }
    $("row-count").textContent = `${shown} of ${rows.length} shown`;
  };
  for (const id of ["step-min", "step-max", "reward-min", "search"]) $(id).addEventListener("input", apply);
  $("reset").addEventListener("click", () => {
    for (const id of ["step-min", "step-max", "reward-min", "search"]) $(id).value = "";
    apply();
  });
  apply();
}

for (const [label, value] of DATA.summary) $("summary").append(el("span", {}, `${label}: ${value}`));
for (const note of DATA.notes) $("notes").append(el("p", {class: "note"}, note));
for (const spec of DATA.plots) $("plots").append(linePlot(spec));
if (!DATA.plots.length) $("plots").append(el("p", {class: "note"}, "No metrics logged yet."));
buildTable();
$("config").textContent = DATA.config;
</script>
</body>
</html>
"""
