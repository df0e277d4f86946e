// The time-series chart of the GPU page, drawn as SVG: axes with units, a line with gaps where
// samples are missing, and a cursor to read a value with the mouse or the keyboard. Also the
// choice of the downsampling step, so a chart never asks for more points than it has pixels.
import { el, svg, displayUnit, formatDuration, formatNumber, formatTime, timeZoneName } from "./common.js";

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** Steps the API is asked for: round durations, from 1 s (the feed's resolution) up. */
const STEPS = [
  SECOND, 2 * SECOND, 5 * SECOND, 10 * SECOND, 15 * SECOND, 30 * SECOND,
  MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE,
  HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY,
];

/** Spacing of the time axis' ticks (the steps, then whole weeks). */
const TICK_INTERVALS = [...STEPS, 2 * DAY, 7 * DAY];

const HEIGHT = 200;
const MARGIN = { top: 22, right: 14, bottom: 26, left: 54 };
/** Samples further apart than this are not joined by a line (Prometheus' staleness window). */
const JOIN_AT_MOST = 5 * MINUTE;

/** The width in pixels of the plot area of a chart `width` pixels wide. */
export function plotWidth(width) {
  return Math.max(1, width - MARGIN.left - MARGIN.right);
}

/**
 * The downsampling step for a window of `windowMs` drawn over `pixels`: the smallest round step
 * with at most one bucket per pixel (a window touches at most window / step + 1 buckets).
 */
export function chooseStep(windowMs, pixels) {
  const wanted = windowMs / Math.max(1, pixels - 1);
  return STEPS.find((step) => step >= wanted) ?? Math.ceil(wanted / DAY) * DAY;
}

/** A step as the API writes durations: `2s`, `5m`, `1h`, `1d`. */
export function stepText(ms) {
  for (const [size, unit] of [[DAY, "d"], [HOUR, "h"], [MINUTE, "m"]]) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${Math.round(ms / SECOND)}s`;
}

/** A round number near `value` (1, 2 or 5 times a power of ten). */
function roundNumber(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  const fraction = value / power;
  return (fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10) * power;
}

/** Value axis covering `[low, high]` with about `count` round ticks. */
function valueAxis(low, high, count, nonNegative) {
  if (high === low) {
    const pad = low === 0 ? 1 : Math.abs(low) * 0.05;
    low -= pad;
    high += pad;
  }
  if (nonNegative) low = Math.max(0, low);
  const step = roundNumber((high - low) / (count - 1));
  const first = Math.floor(low / step) * step;
  const last = Math.ceil(high / step) * step;
  const ticks = [];
  for (let i = 0; first + i * step <= last + step / 2; i++) {
    ticks.push(Number((first + i * step).toPrecision(12)));
  }
  return { low: first, high: last, ticks };
}

/** Time axis ticks in `[from, to]` at a round interval in the browser's time zone. */
function timeTicks(from, to, pixels) {
  const span = to - from;
  const withDate = span > 2 * DAY;
  const most = Math.max(2, Math.floor(pixels / (withDate ? 120 : 80)));
  const interval = TICK_INTERVALS.find((i) => span / i <= most) ?? TICK_INTERVALS.at(-1);
  const offset = -new Date(from).getTimezoneOffset() * MINUTE;
  const ticks = [];
  for (let t = Math.ceil((from + offset) / interval) * interval - offset; t <= to; t += interval) {
    ticks.push(t);
  }
  const label = (t) => formatTime(t, { seconds: interval < MINUTE, date: withDate });
  return { ticks, label };
}

/** A chart in `container`; `draw` (re)draws it. */
export class TimeSeriesChart {
  constructor(container, title) {
    this.container = container;
    this.title = title;
    this.points = [];
    this.cursor = -1;
    this.svg = svg("svg", { class: "chart-svg", role: "img", tabindex: "0", "aria-label": title });
    this.tooltip = el("div", { class: "chart-tooltip", hidden: true, "aria-hidden": "true" });
    // What the keyboard cursor points at, read out by screen readers.
    this.live = el("p", { class: "visually-hidden", "aria-live": "polite" });
    container.append(this.svg, this.tooltip, this.live);
    this.svg.addEventListener("pointermove", (event) => {
      this.pointer = event.clientX;
      this.pointAt(this.pointer);
    });
    this.svg.addEventListener("pointerleave", () => {
      this.pointer = undefined;
      this.hideCursor();
    });
    this.svg.addEventListener("keydown", (event) => this.key(event));
    this.svg.addEventListener("focus", () => this.points.length && this.moveCursor(this.points.length - 1, true));
    this.svg.addEventListener("blur", () => this.hideCursor());
  }

  /** Pixels available to the chart now. */
  width() {
    return Math.max(240, Math.floor(this.container.clientWidth));
  }

  /**
   * Draws `points` (`{ t, v }`, ms and value, sorted by time) over `[start, end]`, bucketed by
   * `step` ms, with values in `unit` (from `GET /api/v1/metrics`).
   */
  draw({ points, start, end, step, unit }) {
    const width = this.width();
    const plotW = plotWidth(width);
    const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    // Buckets are timestamped with their start, aligned to multiples of the step.
    const from = Math.floor(start / step) * step;
    const to = Math.max(end, from + step);
    const largest = points.reduce((m, p) => Math.max(m, Math.abs(p.v)), 0);
    const shown = displayUnit(unit, largest);
    const values = points.map((p) => p.v / shown.factor);
    const axis =
      unit === "%"
        ? { low: 0, high: 100, ticks: [0, 25, 50, 75, 100] }
        : valueAxis(
            values.length ? Math.min(...values) : 0,
            values.length ? Math.max(...values) : 1,
            5,
            values.every((v) => v >= 0),
          );
    const x = (t) => MARGIN.left + ((t - from) / (to - from)) * plotW;
    const y = (v) => MARGIN.top + plotH - ((v - axis.low) / (axis.high - axis.low)) * plotH;

    this.points = points.map((p, i) => ({ t: p.t, v: p.v, shown: values[i], x: x(p.t), y: y(values[i]) }));
    this.unitLabel = shown.label;
    this.step = step;
    this.cursor = -1;

    const grid = svg("g", { class: "chart-grid" });
    for (const tick of axis.ticks) {
      grid.append(
        svg("line", { x1: MARGIN.left, x2: MARGIN.left + plotW, y1: y(tick), y2: y(tick) }),
        svg("text", { x: MARGIN.left - 6, y: y(tick), class: "chart-tick-y", text: formatNumber(tick) }),
      );
    }
    const time = timeTicks(from, to, plotW);
    for (const tick of time.ticks) {
      grid.append(
        svg("line", { class: "chart-tick-x-line", x1: x(tick), x2: x(tick), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4 }),
        svg("text", { x: x(tick), y: HEIGHT - 8, class: "chart-tick-x", text: time.label(tick) }),
      );
    }
    const axes = svg(
      "g",
      { class: "chart-axes" },
      svg("line", { x1: MARGIN.left, x2: MARGIN.left + plotW, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH }),
      svg("line", { x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: MARGIN.top + plotH }),
      svg("text", { x: 4, y: 12, class: "chart-unit", text: shown.label || "value" }),
      svg("text", { x: MARGIN.left + plotW, y: 12, class: "chart-zone", text: timeZoneName() }),
    );

    // One subpath per run of samples close enough to be joined; a lone sample gets a dot.
    let d = "";
    const dots = svg("g", { class: "chart-dots" });
    this.points.forEach((p, i) => {
      const joinedBefore = i > 0 && p.t - this.points[i - 1].t <= Math.max(JOIN_AT_MOST, 3 * step);
      const next = this.points[i + 1];
      const joinedAfter = next !== undefined && next.t - p.t <= Math.max(JOIN_AT_MOST, 3 * step);
      d += `${joinedBefore ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`;
      if (!joinedBefore && !joinedAfter) dots.append(svg("circle", { cx: p.x.toFixed(1), cy: p.y.toFixed(1), r: 2.5 }));
    });
    const line = svg("path", { class: "chart-line", d });

    this.crosshair = svg("line", { class: "chart-crosshair", y1: MARGIN.top, y2: MARGIN.top + plotH, visibility: "hidden" });
    this.marker = svg("circle", { class: "chart-marker", r: 4, visibility: "hidden" });
    const children = [grid, axes, line, dots, this.crosshair, this.marker];
    if (!points.length) {
      children.push(svg("text", { x: MARGIN.left + plotW / 2, y: MARGIN.top + plotH / 2, class: "chart-empty", text: "No samples in this window" }));
    }
    this.svg.replaceChildren(...children);
    this.svg.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
    this.svg.setAttribute("width", String(width));
    this.svg.setAttribute("height", String(HEIGHT));
    this.svg.dataset.points = String(points.length);
    this.svg.setAttribute("aria-label", this.summary(start, end));
    this.tooltip.hidden = true;
    // A redraw under the mouse (a refresh, a resize) keeps reading where the mouse is.
    if (this.pointer !== undefined) this.pointAt(this.pointer);
  }

  /** What the chart shows, in words (its accessible name). */
  summary(start, end) {
    const window = `${formatTime(start, { date: true })} to ${formatTime(end, { date: true })}`;
    if (!this.points.length) return `${this.title}: no samples from ${window}`;
    const values = this.points.map((p) => p.shown);
    const unit = this.unitLabel ? ` ${this.unitLabel}` : "";
    return (
      `${this.title}: ${this.points.length} points from ${window}, ` +
      `lowest ${formatNumber(Math.min(...values))}${unit}, highest ${formatNumber(Math.max(...values))}${unit}, ` +
      `latest ${formatNumber(values.at(-1))}${unit}. Use the arrow keys to read values.`
    );
  }

  /** Moves the cursor to the point nearest the mouse at `clientX`. */
  pointAt(clientX) {
    if (!this.points.length) return;
    const box = this.svg.getBoundingClientRect();
    const scale = box.width ? Number(this.svg.getAttribute("width")) / box.width : 1;
    const px = (clientX - box.left) * scale;
    // Nearest point by x (points are sorted by time, so by x).
    let lo = 0;
    let hi = this.points.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.points[mid].x < px) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && px - this.points[lo - 1].x < this.points[lo].x - px) lo -= 1;
    this.moveCursor(lo, false);
  }

  key(event) {
    if (!this.points.length) return;
    const last = this.points.length - 1;
    const at = this.cursor < 0 ? last : this.cursor;
    const moves = { ArrowLeft: at - 1, ArrowRight: at + 1, PageUp: at - 10, PageDown: at + 10, Home: 0, End: last };
    if (event.key === "Escape") {
      this.hideCursor();
      return;
    }
    if (!(event.key in moves)) return;
    event.preventDefault();
    this.moveCursor(Math.min(last, Math.max(0, moves[event.key])), true);
  }

  moveCursor(index, announce) {
    const p = this.points[index];
    this.cursor = index;
    this.crosshair.setAttribute("x1", p.x.toFixed(1));
    this.crosshair.setAttribute("x2", p.x.toFixed(1));
    this.marker.setAttribute("cx", p.x.toFixed(1));
    this.marker.setAttribute("cy", p.y.toFixed(1));
    this.crosshair.setAttribute("visibility", "visible");
    this.marker.setAttribute("visibility", "visible");
    const unit = this.unitLabel ? ` ${this.unitLabel}` : "";
    const text = `${formatTime(p.t, { date: true })}: ${formatNumber(p.shown)}${unit}`;
    const over = this.step > SECOND ? ` (average over ${formatDuration(this.step)})` : "";
    this.tooltip.replaceChildren(el("strong", { text: `${formatNumber(p.shown)}${unit}` }), el("span", { text: `${formatTime(p.t)}${over}` }));
    this.tooltip.hidden = false;
    // Placed in CSS pixels of the rendered chart, beside the point and away from the line: left
    // of it near the right edge, above it in the lower half.
    const scale = this.svg.getBoundingClientRect().width / Number(this.svg.getAttribute("width")) || 1;
    const left = p.x * scale;
    this.tooltip.classList.toggle("flip", left > this.container.clientWidth * 0.6);
    this.tooltip.classList.toggle("above", p.y > HEIGHT / 2);
    this.tooltip.style.left = `${left}px`;
    this.tooltip.style.top = `${p.y * scale}px`;
    if (announce) this.live.textContent = text + over;
  }

  hideCursor() {
    this.cursor = -1;
    this.crosshair?.setAttribute("visibility", "hidden");
    this.marker?.setAttribute("visibility", "hidden");
    this.tooltip.hidden = true;
  }
}
