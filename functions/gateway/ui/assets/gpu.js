// The GPU page: the GPU's details (GET /api/v1/gpus/{id}) and one chart per metric over the
// chosen window. Each chart asks the telemetry API for its metric downsampled with a step of
// window / plot width rounded up to a round duration, so no chart receives more points than it
// has pixels, in the series form (arrays of times and values, no timestamp text to parse), and
// links that query as JSON and as PromQL.
import { el, getJson, metricCatalog, metricTitle, setupThemeToggle, showError, formatDuration, formatNumber, formatTime, unitLabel } from "./common.js";
import { TimeSeriesChart, chooseStep, plotWidth, stepText } from "./chart.js";

const MINUTE = 60 * 1000;
const WINDOWS = { "15m": 15 * MINUTE, "1h": 60 * MINUTE, "6h": 360 * MINUTE, "24h": 1440 * MINUTE };
const DEFAULT_WINDOW = "1h";
/** Relative windows are redrawn this often. */
const REFRESH_MS = 30 * 1000;
/** A chart never needs more than one page (points <= pixels <= the page size); a bound anyway. */
const MAX_PAGES = 10;
/** The metrics operators look at first, in this order; any others follow by name. */
const METRIC_ORDER = [
  "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
  "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK",
  "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL",
];

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const gpuId = params.get("id") || "";
const charts = new Map();
let catalog = new Map();
/** Server clock minus browser clock, so "the last hour" is the gateway's last hour. */
let clockSkew = 0;
let refreshTimer = 0;
let drawnWidth = 0;
let generation = 0;

/** The window shown: `{ key }` for a relative one, `{ start, end }` (ms) for a custom range. */
function chosenWindow() {
  const start = Date.parse(params.get("start") || "");
  const end = Date.parse(params.get("end") || "");
  if (!Number.isNaN(start) && !Number.isNaN(end) && start < end) return { start, end };
  const key = params.get("window");
  return { key: key in WINDOWS ? key : DEFAULT_WINDOW };
}

function rangeOf(chosen) {
  if (chosen.key === undefined) return { start: chosen.start, end: chosen.end };
  const end = Date.now() + clockSkew;
  return { start: end - WINDOWS[chosen.key], end };
}

function iso(ms) {
  return new Date(ms).toISOString();
}

/** A `datetime-local` value (local time, seconds) for `ms`. */
function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * MINUTE);
  return d.toISOString().slice(0, 19);
}

function setUrl(next) {
  const query = new URLSearchParams({ id: gpuId });
  if (next.key !== undefined) query.set("window", next.key);
  else {
    query.set("start", iso(next.start));
    query.set("end", iso(next.end));
  }
  window.history.replaceState(null, "", `?${query}`);
  for (const key of ["window", "start", "end"]) params.delete(key);
  for (const [key, value] of query) params.set(key, value);
}

function showDetails(gpu, serverNow) {
  const host = gpu.hostname || "unknown host";
  const name = gpu.gpu_id === null ? gpu.uuid : `GPU ${gpu.gpu_id}`;
  document.title = `${name} on ${host} · GPU telemetry`;
  $("title").textContent = `${name} on ${host}`;
  $("crumb-gpu").textContent = name;
  $("crumb-host").textContent = host;
  $("crumb-host").href = gpu.hostname ? `/ui/?host=${encodeURIComponent(gpu.hostname)}` : "/ui/";
  const lastSeen = Date.parse(gpu.last_seen);
  const facts = [
    ["UUID", el("code", { text: gpu.uuid })],
    ["Host", gpu.hostname ? el("a", { href: `/ui/?host=${encodeURIComponent(gpu.hostname)}`, text: gpu.hostname }) : "–"],
    ["Index", gpu.gpu_id === null ? "–" : `${gpu.gpu_id}${gpu.device ? ` (${gpu.device})` : ""}`],
    ["Model", gpu.model_name || "–"],
    ["Driver", gpu.labels.DCGM_FI_DRIVER_VERSION || "–"],
    ["Pod", gpu.pod ? `${gpu.namespace ? `${gpu.namespace}/` : ""}${gpu.pod}${gpu.container ? ` (${gpu.container})` : ""}` : "–"],
    ["First sample", formatTime(Date.parse(gpu.first_seen), { date: true })],
    ["Last sample", `${formatTime(lastSeen, { date: true })} (${formatDuration(Math.max(0, serverNow - lastSeen))} ago)`],
  ];
  $("details").replaceChildren(...facts.map(([term, value]) => el("div", {}, el("dt", { text: term }), el("dd", {}, value))));
}

function orderMetrics(names) {
  const rank = (name) => {
    const i = METRIC_ORDER.indexOf(name);
    return i < 0 ? METRIC_ORDER.length : i;
  };
  return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

function createChart(metric) {
  const info = catalog.get(metric);
  const title = metricTitle(metric, info);
  const json = el("a", { class: "json-link", href: "#", text: "JSON" });
  const promql = el("a", { class: "promql-link", href: "#", text: "PromQL" });
  const canvas = el("div", { class: "chart-canvas" });
  const table = el("details", { class: "chart-table" }, el("summary", { text: "Table of values" }));
  const figure = el(
    "figure",
    { class: "chart", dataset: { metric, state: "loading" } },
    el(
      "figcaption",
      {},
      el("span", { class: "chart-title", text: title }),
      el("code", { class: "chart-metric", text: metric }),
      el("span", { class: "chart-links" }, json, promql),
    ),
    canvas,
    table,
  );
  const entry = { metric, info, figure, json, promql, table, chart: new TimeSeriesChart(canvas, title) };
  table.addEventListener("toggle", () => table.open && fillTable(entry));
  return entry;
}

/** The chart's values as a table, built only when opened. */
function fillTable(entry) {
  const { chart, info, table } = entry;
  const unit = chart.unitLabel || unitLabel(info && info.unit);
  const rows = chart.points.map((p) => el("tr", {}, el("td", { text: formatTime(p.t, { date: true }) }), el("td", { text: formatNumber(p.shown) })));
  const body = rows.length ? rows : [el("tr", {}, el("td", { colspan: "2", text: "No samples in this window" }))];
  table.querySelector("table")?.remove();
  table.append(
    el(
      "table",
      {},
      el("caption", { class: "visually-hidden", text: `${chart.title}, one row per ${stepText(chart.step)}` }),
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Time" }), el("th", { scope: "col", text: unit ? `Value (${unit})` : "Value" }))),
      el("tbody", {}, body),
    ),
  );
}

/** Reads one chart's series: every page of the downsampled query. */
async function readSeries(metric, start, end, step) {
  const query = new URLSearchParams({
    metric_name: metric,
    start_time: iso(start),
    end_time: iso(end),
    step: stepText(step),
    agg: "avg",
    format: "series",
    limit: "10000",
  });
  const first = `/api/v1/gpus/${encodeURIComponent(gpuId)}/telemetry?${query}`;
  const points = [];
  let url = first;
  for (let page = 0; url && page < MAX_PAGES; page++) {
    const { body } = await getJson(url);
    // One series (the chart's metric), or none when the window holds no samples.
    for (const series of body.series) {
      series.timestamps_us.forEach((us, i) => points.push({ t: us / 1000, v: series.values[i] }));
    }
    url = body.next_cursor ? `${first}&cursor=${encodeURIComponent(body.next_cursor)}` : null;
  }
  return { points, url: first };
}

/** The same series in PromQL, on the Prometheus-compatible API. */
function promqlUrl(metric, start, end, step) {
  const query = new URLSearchParams({
    query: `${metric}{UUID="${gpuId}"}`,
    start: (start / 1000).toFixed(3),
    end: (end / 1000).toFixed(3),
    step: stepText(step),
  });
  return `/api/v1/query_range?${query}`;
}

async function drawChart(entry, start, end, mine) {
  const step = chooseStep(end - start, plotWidth(entry.chart.width()));
  entry.figure.dataset.state = "loading";
  try {
    const { points, url } = await readSeries(entry.metric, start, end, step);
    if (mine !== generation) return;
    entry.chart.draw({ points, start, end, step, unit: entry.info && entry.info.unit });
    entry.json.href = url;
    entry.promql.href = promqlUrl(entry.metric, start, end, step);
    entry.figure.dataset.points = String(points.length);
    entry.figure.dataset.step = stepText(step);
    entry.figure.dataset.state = "ready";
    if (entry.table.open) fillTable(entry);
  } catch (error) {
    if (mine !== generation) return;
    entry.figure.dataset.state = "error";
    entry.chart.container.replaceChildren(el("p", { class: "error", text: error.message }));
  }
}

async function drawAll() {
  window.clearTimeout(refreshTimer);
  const mine = ++generation;
  const chosen = chosenWindow();
  const { start, end } = rangeOf(chosen);
  drawnWidth = $("charts").clientWidth;
  const steps = new Set([...charts.values()].map((c) => stepText(chooseStep(end - start, plotWidth(c.chart.width())))));
  $("chart-status").textContent =
    `${formatTime(start, { date: true })} – ${formatTime(end, { date: true })}, ` +
    `averaged over ${[...steps].join(" / ")} steps`;
  await Promise.all([...charts.values()].map((entry) => drawChart(entry, start, end, mine)));
  if (mine === generation && chosen.key !== undefined) {
    refreshTimer = window.setTimeout(() => document.hidden || drawAll(), REFRESH_MS);
  }
}

function setupWindowForm() {
  const form = $("window-form");
  const custom = $("custom-range");
  const chosen = chosenWindow();
  const range = rangeOf(chosen);
  form.elements.window.value = chosen.key ?? "custom";
  custom.hidden = chosen.key !== undefined;
  form.elements.start.value = localInput(range.start);
  form.elements.end.value = localInput(range.end);
  for (const radio of form.elements.window) {
    radio.addEventListener("change", () => {
      if (radio.value === "custom") {
        custom.hidden = false;
        form.elements.start.focus();
        return;
      }
      custom.hidden = true;
      setUrl({ key: radio.value });
      drawAll();
    });
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const start = new Date(form.elements.start.value).getTime();
    const end = new Date(form.elements.end.value).getTime();
    if (Number.isNaN(start) || Number.isNaN(end) || start >= end) {
      showError($("error"), new Error("the custom range needs a start before its end"));
      return;
    }
    showError($("error"), null);
    setUrl({ start, end });
    drawAll();
  });
}

async function main() {
  setupThemeToggle($("theme-toggle"));
  if (!gpuId) {
    showError($("error"), new Error("no GPU chosen: open this page from the fleet overview"));
    return;
  }
  let gpu;
  try {
    const [detail, metrics] = await Promise.all([getJson(`/api/v1/gpus/${encodeURIComponent(gpuId)}`), metricCatalog()]);
    gpu = detail.body;
    catalog = metrics;
    clockSkew = detail.date - Date.now();
    showDetails(gpu, detail.date);
  } catch (error) {
    showError($("error"), error);
    return;
  }
  for (const metric of orderMetrics(gpu.metrics)) charts.set(metric, createChart(metric));
  $("charts").replaceChildren(...[...charts.values()].map((c) => c.figure));
  setupWindowForm();
  await drawAll();
  // A different width means a different step: redraw once the resizing settles.
  let resizeTimer = 0;
  new ResizeObserver(() => {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(() => $("charts").clientWidth !== drawnWidth && drawAll(), 300);
  }).observe($("charts"));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && chosenWindow().key !== undefined) drawAll();
  });
}

main();
