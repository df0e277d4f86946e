// What the dashboard's pages share: reading the JSON API, building DOM nodes, formatting values,
// units, times and durations, metric descriptions, and the theme toggle.

export const THEME_KEY = "gpu-telemetry-theme";

/** A failed API call, with the problem document's detail when the gateway sent one. */
export class ApiFailure extends Error {
  constructor(path, status, detail) {
    super(detail || `${path} answered ${status}`);
    this.path = path;
    this.status = status;
  }
}

/** GETs a JSON document from the API; resolves to `{ body, date }` (`date`: the server's clock). */
export async function getJson(path) {
  let response;
  try {
    response = await fetch(path, { headers: { accept: "application/json" } });
  } catch (error) {
    throw new ApiFailure(path, 0, `the gateway cannot be reached (${error.message})`);
  }
  if (!response.ok) {
    let detail = "";
    try {
      detail = (await response.json()).detail || "";
    } catch (_) {
      // Not a problem document: the status says enough.
    }
    throw new ApiFailure(path, response.status, detail);
  }
  const date = Date.parse(response.headers.get("date") || "");
  return { body: await response.json(), date: Number.isNaN(date) ? Date.now() : date };
}

/**
 * Creates an element. `props`: `class`, `text`, `dataset` (object), `on` (event -> handler), any
 * other key becomes an attribute (skipped when null or false).
 */
export function el(tag, props = {}, ...children) {
  return build(document.createElement(tag), props, children);
}

export const SVG_NS = "http://www.w3.org/2000/svg";

/** Like `el`, in the SVG namespace. */
export function svg(tag, props = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

function build(node, props, children) {
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "on") for (const [type, handler] of Object.entries(value)) node.addEventListener(type, handler);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** How a unit of `GET /api/v1/metrics` is written next to a number. */
export function unitLabel(unit) {
  if (unit === "celsius") return "°C";
  if (unit === "ratio") return "";
  return unit || "";
}

/**
 * The unit values are shown in, for values up to `largest`: MiB become GiB from 1 GiB on, so an
 * 80 GB framebuffer reads 79.6 GiB, not 81,559 MiB. `{ label, factor }`: divide by `factor`.
 */
export function displayUnit(unit, largest) {
  if (unit === "MiB" && Math.abs(largest) >= 1024) return { label: "GiB", factor: 1024 };
  return { label: unitLabel(unit), factor: 1 };
}

/** A number with as many decimals as its size deserves. */
export function formatNumber(value) {
  if (!Number.isFinite(value)) return "–";
  const size = Math.abs(value);
  const digits = size >= 100 || Number.isInteger(value) ? 0 : size >= 10 ? 1 : 2;
  return value.toLocaleString("en-US", { maximumFractionDigits: digits });
}

/** A value with its unit (`87 %`, `45 °C`, `40.1 GiB`). */
export function formatValue(value, unit) {
  const shown = displayUnit(unit, value);
  const text = formatNumber(value / shown.factor);
  return shown.label ? `${text} ${shown.label}` : text;
}

/** A duration for people: `850 ms`, `12 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`. */
export function formatDuration(ms) {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const parts = [
    [Math.floor(s / 86400), "d"],
    [Math.floor(s / 3600) % 24, "h"],
    [Math.floor(s / 60) % 60, "min"],
    [s % 60, "s"],
  ];
  const first = parts.findIndex(([n]) => n > 0);
  return parts
    .slice(first, first + 2)
    .filter(([n]) => n > 0)
    .map(([n, u]) => `${n} ${u}`)
    .join(" ");
}

/** A time of day in the browser's time zone, with the date when asked. */
export function formatTime(ms, { seconds = true, date = false } = {}) {
  return new Date(ms).toLocaleString("en-GB", {
    year: date ? "numeric" : undefined,
    month: date ? "short" : undefined,
    day: date ? "numeric" : undefined,
    hour: "2-digit",
    minute: "2-digit",
    second: seconds ? "2-digit" : undefined,
    hour12: false,
  });
}

/** The browser's time zone name, for axis captions. */
export function timeZoneName() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
}

/** Descriptions and units of the metrics the store has seen, by name (`GET /api/v1/metrics`). */
export async function metricCatalog() {
  const { body } = await getJson("/api/v1/metrics");
  return new Map(body.metrics.map((m) => [m.name, m]));
}

/** A short title from a DCGM description: "GPU temperature (in C)." -> "GPU temperature". */
export function metricTitle(name, info) {
  const description = info && info.description;
  if (!description) return name;
  return description.replace(/\s*\(in [^)]*\)\s*/, " ").replace(/\.\s*$/, "").trim();
}

/** Wires the theme toggle: it flips between light and dark and remembers the choice. */
export function setupThemeToggle(button) {
  const root = document.documentElement;
  const systemDark = window.matchMedia("(prefers-color-scheme: dark)");
  const current = () => root.dataset.theme || (systemDark.matches ? "dark" : "light");
  const show = () => button.setAttribute("aria-pressed", String(current() === "dark"));
  button.addEventListener("click", () => {
    root.dataset.theme = current() === "dark" ? "light" : "dark";
    try {
      window.localStorage.setItem(THEME_KEY, root.dataset.theme);
    } catch (_) {
      // Not remembered; the page still switches.
    }
    show();
    document.dispatchEvent(new CustomEvent("themechange"));
  });
  systemDark.addEventListener("change", show);
  show();
}

/** Shows `error` in `banner` (an element with role=alert), or hides the banner when null. */
export function showError(banner, error) {
  banner.hidden = !error;
  banner.textContent = error ? `Could not load data: ${error.message}` : "";
}
