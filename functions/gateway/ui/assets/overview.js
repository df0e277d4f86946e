// The fleet overview: reads every GPU's latest utilization, temperature, power and framebuffer
// use from GET /api/v1/latest (paged), and the queue from GET /api/v1/queue, and shows the hosts
// with their GPUs as a grid, a page of hosts at a time, so a fleet of 10,000 GPUs draws a few
// hundred cells. Filters by host (substring) and model; refreshes on its own.
import { el, getJson, setupThemeToggle, showError, formatDuration, formatNumber, formatTime, formatValue } from "./common.js";

/** The values shown per GPU, and their units (`GET /api/v1/metrics` gives the same). */
const SHOWN = [
  { key: "util", metric: "DCGM_FI_DEV_GPU_UTIL", unit: "%", label: "utilization" },
  { key: "temp", metric: "DCGM_FI_DEV_GPU_TEMP", unit: "celsius", label: "temperature" },
  { key: "power", metric: "DCGM_FI_DEV_POWER_USAGE", unit: "W", label: "power" },
  { key: "fb", metric: "DCGM_FI_DEV_FB_USED", unit: "MiB", label: "framebuffer used" },
];
/** GPUs per API page. */
const API_PAGE = 2000;
/** Hosts drawn at once. */
const HOSTS_PER_PAGE = 40;
const REFRESH_MS = 10 * 1000;
/** A GPU whose newest sample is this much older than the fleet's newest is marked stale. */
const STALE_MS = 60 * 1000;
/** Colour classes by utilization, highest first. */
const LOAD = [[90, "load-4"], [70, "load-3"], [40, "load-2"], [10, "load-1"]];

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const state = {
  gpus: [],
  newest: 0,
  page: Math.max(0, Number(params.get("page") || 1) - 1) || 0,
  host: params.get("host") || "",
  model: params.get("model") || "",
};
let refreshTimer = 0;

/** Every GPU with its latest values, following `next_cursor`; `date` is the server's clock. */
async function readFleet() {
  const gpus = [];
  let cursor = null;
  let date = Date.now();
  do {
    const query = new URLSearchParams({ metric_name: SHOWN.map((s) => s.metric).join(","), limit: String(API_PAGE) });
    if (cursor) query.set("cursor", cursor);
    const page = await getJson(`/api/v1/latest?${query}`);
    for (const gpu of page.body.gpus) {
      const values = {};
      for (const m of gpu.metrics) values[m.metric_name] = m.value;
      gpus.push({
        uuid: gpu.uuid,
        index: gpu.gpu_id,
        host: gpu.hostname || "",
        model: gpu.model_name || "",
        lastSeen: Date.parse(gpu.last_seen),
        values: Object.fromEntries(SHOWN.map((s) => [s.key, values[s.metric]])),
      });
    }
    cursor = page.body.next_cursor;
    date = page.date;
  } while (cursor);
  return { gpus, date };
}

function loadClass(util) {
  if (util === undefined) return "load-none";
  return (LOAD.find(([least]) => util >= least) || [0, "load-0"])[1];
}

function matches(gpu) {
  return (
    (!state.host || gpu.host.toLowerCase().includes(state.host.toLowerCase())) &&
    (!state.model || gpu.model === state.model)
  );
}

/** The GPUs grouped by host, hosts by name (numbers in names compared as numbers). */
function byHost(gpus) {
  const hosts = new Map();
  for (const gpu of gpus) {
    if (!hosts.has(gpu.host)) hosts.set(gpu.host, []);
    hosts.get(gpu.host).push(gpu);
  }
  const collator = new Intl.Collator("en", { numeric: true });
  for (const list of hosts.values()) list.sort((a, b) => (a.index ?? 1e9) - (b.index ?? 1e9) || collator.compare(a.uuid, b.uuid));
  return [...hosts.entries()].sort(([a], [b]) => collator.compare(a, b));
}

function mean(values) {
  const known = values.filter((v) => v !== undefined);
  return known.length ? known.reduce((a, b) => a + b, 0) / known.length : undefined;
}

function gpuCell(gpu) {
  const stale = state.newest - gpu.lastSeen > STALE_MS;
  const shown = SHOWN.map((s) => ({ ...s, text: gpu.values[s.key] === undefined ? "–" : formatValue(gpu.values[s.key], s.unit) }));
  const name = gpu.index === null || gpu.index === undefined ? gpu.uuid : `GPU ${gpu.index}`;
  const label = `${name} on ${gpu.host || "unknown host"}: ${shown.map((s) => `${s.label} ${s.text}`).join(", ")}${stale ? ", stale" : ""}`;
  const [util, temp, power, fb] = shown;
  return el(
    "li",
    {},
    el(
      "a",
      {
        class: `gpu ${loadClass(gpu.values.util)}${stale ? " stale" : ""}`,
        href: `/ui/gpu.html?id=${encodeURIComponent(gpu.uuid)}`,
        "aria-label": label,
        title: `${gpu.uuid}\nlast sample ${formatTime(gpu.lastSeen, { date: true })}`,
        dataset: { uuid: gpu.uuid },
      },
      el("span", { class: "gpu-head" }, el("span", { class: "gpu-index", text: gpu.index ?? "?" }), el("span", { class: "gpu-util", text: util.text })),
      el("span", { class: "gpu-line" }, el("span", { text: temp.text }), el("span", { text: power.text })),
      el("span", { class: "gpu-line" }, el("span", { text: fb.text })),
    ),
  );
}

function hostItem([host, gpus]) {
  const util = mean(gpus.map((g) => g.values.util));
  const filter = `/ui/?host=${encodeURIComponent(host)}`;
  return el(
    "li",
    { class: "host", dataset: { host } },
    el(
      "div",
      { class: "host-head" },
      el("h3", {}, host ? el("a", { href: filter, text: host }) : "unknown host"),
      el("p", { class: "muted", text: `${gpus.length} GPU${gpus.length === 1 ? "" : "s"}${util === undefined ? "" : ` · mean ${formatNumber(util)} %`}` }),
    ),
    el("ul", { class: "gpus", "aria-label": `GPUs of ${host || "unknown host"}` }, gpus.map(gpuCell)),
  );
}

function renderSummary(date) {
  const hosts = new Set(state.gpus.map((g) => g.host));
  const models = new Set(state.gpus.map((g) => g.model).filter(Boolean));
  $("stat-gpus").textContent = String(state.gpus.length);
  $("stat-gpus-note").textContent = `${models.size} model${models.size === 1 ? "" : "s"}`;
  $("stat-hosts").textContent = String(hosts.size);
  const perHost = byHost(state.gpus).map(([, gpus]) => gpus.length);
  const [fewest, most] = [Math.min(...perHost), Math.max(...perHost)];
  $("stat-hosts-note").textContent = perHost.length ? `${fewest === most ? most : `${fewest}–${most}`} GPUs each` : "";
  const util = mean(state.gpus.map((g) => g.values.util));
  const busy = state.gpus.filter((g) => g.values.util >= 90).length;
  $("stat-util").textContent = util === undefined ? "–" : `${formatNumber(util)} %`;
  $("stat-util-note").textContent = `${busy} GPU${busy === 1 ? "" : "s"} at 90 % or more`;
  $("stat-lag").textContent = state.gpus.length ? formatDuration(Math.max(0, date - state.newest)) : "–";
  $("updated").textContent = `Updated ${formatTime(date)}`;

  const modelSelect = $("filter-model");
  const options = [...models].sort();
  if (modelSelect.options.length - 1 !== options.length || options.some((m, i) => modelSelect.options[i + 1].value !== m)) {
    modelSelect.replaceChildren(el("option", { value: "", text: "All models" }), ...options.map((m) => el("option", { value: m, text: m })));
    modelSelect.value = state.model;
  }
  const collator = new Intl.Collator("en", { numeric: true });
  $("host-names").replaceChildren(...[...hosts].sort(collator.compare).map((h) => el("option", { value: h })));
}

function renderQueue(queue) {
  if (!queue.exists) {
    $("stat-depth").textContent = "–";
    $("stat-depth-note").textContent = "no queue yet (nothing streamed)";
    $("stat-collectors").textContent = "0";
    $("stat-collectors-note").textContent = "";
    return;
  }
  const largest = queue.partitions.reduce((m, p) => Math.max(m, p.lag), 0);
  const owned = queue.partitions.filter((p) => p.owner !== null).length;
  $("stat-depth").textContent = queue.depth.toLocaleString("en-US");
  $("stat-depth-note").textContent = `messages pending; largest partition lag ${largest}`;
  $("stat-collectors").textContent = String(queue.members.length);
  $("stat-collectors-note").textContent = `owning ${owned} of ${queue.partitions.length} partitions`;
}

function renderGrid() {
  const visible = state.gpus.filter(matches);
  const hosts = byHost(visible);
  const pages = Math.max(1, Math.ceil(hosts.length / HOSTS_PER_PAGE));
  state.page = Math.min(state.page, pages - 1);
  const shown = hosts.slice(state.page * HOSTS_PER_PAGE, (state.page + 1) * HOSTS_PER_PAGE);
  // Keep the keyboard focus on the same GPU across a refresh.
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.uuid : undefined;
  const grid = $("hosts");
  grid.replaceChildren(...shown.map(hostItem));
  grid.dataset.gpus = String(shown.reduce((n, [, gpus]) => n + gpus.length, 0));
  grid.dataset.hosts = String(shown.length);
  if (focused) grid.querySelector(`[data-uuid="${CSS.escape(focused)}"]`)?.focus({ preventScroll: true });
  const allHosts = new Set(state.gpus.map((g) => g.host)).size;
  $("shown").textContent = visible.length
    ? `Showing ${visible.length} of ${state.gpus.length} GPUs on ${hosts.length} of ${allHosts} hosts`
    : state.gpus.length
      ? "No GPU matches the filters"
      : "No GPU has reported telemetry yet";
  $("pager").hidden = pages === 1;
  $("page-info").textContent = `Hosts ${state.page * HOSTS_PER_PAGE + 1}–${state.page * HOSTS_PER_PAGE + shown.length} of ${hosts.length} (page ${state.page + 1} of ${pages})`;
  $("page-prev").disabled = state.page === 0;
  $("page-next").disabled = state.page >= pages - 1;
}

function saveFilters() {
  const query = new URLSearchParams();
  if (state.host) query.set("host", state.host);
  if (state.model) query.set("model", state.model);
  if (state.page) query.set("page", String(state.page + 1));
  const search = query.toString();
  window.history.replaceState(null, "", search ? `?${search}` : window.location.pathname);
}

async function refresh() {
  window.clearTimeout(refreshTimer);
  try {
    const [fleet, queue] = await Promise.all([readFleet(), getJson("/api/v1/queue")]);
    state.gpus = fleet.gpus;
    state.newest = fleet.gpus.reduce((m, g) => Math.max(m, g.lastSeen), 0);
    renderSummary(fleet.date);
    renderQueue(queue.body);
    renderGrid();
    showError($("error"), null);
  } catch (error) {
    showError($("error"), error);
  }
  document.body.dataset.loaded = "true";
  if ($("auto-refresh").checked) refreshTimer = window.setTimeout(() => document.hidden || refresh(), REFRESH_MS);
}

function setupControls() {
  const host = $("filter-host");
  const model = $("filter-model");
  host.value = state.host;
  let typing = 0;
  host.addEventListener("input", () => {
    window.clearTimeout(typing);
    typing = window.setTimeout(() => {
      state.host = host.value.trim();
      state.page = 0;
      saveFilters();
      renderGrid();
    }, 150);
  });
  model.addEventListener("change", () => {
    state.model = model.value;
    state.page = 0;
    saveFilters();
    renderGrid();
  });
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("refresh-now").addEventListener("click", refresh);
  $("auto-refresh").addEventListener("change", (event) => (event.target.checked ? refresh() : window.clearTimeout(refreshTimer)));
  for (const [id, delta] of [["page-prev", -1], ["page-next", 1]]) {
    $(id).addEventListener("click", () => {
      state.page += delta;
      saveFilters();
      renderGrid();
      $("gpus-heading").scrollIntoView({ block: "start" });
    });
  }
  // Links open on Enter; a GPU cell opens on Space too, like a button.
  $("hosts").addEventListener("keydown", (event) => {
    if (event.key === " " && event.target.matches("a.gpu")) {
      event.preventDefault();
      event.target.click();
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && $("auto-refresh").checked) refresh();
  });
}

setupThemeToggle($("theme-toggle"));
setupControls();
refresh();
