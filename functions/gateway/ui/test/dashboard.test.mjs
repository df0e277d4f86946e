// Browser test of the gateway's dashboard in the system's headless Chromium, driven by
// playwright-core. functions/gateway/scripts/ui-test.sh (`make ui-test`) starts etcd filled from
// the real CSV, a collector and the gateway, then runs this file with node's test runner:
//
//   DASHBOARD_URL      the gateway, e.g. http://127.0.0.1:41234
//   CHROMIUM           the browser (default /usr/bin/chromium)
//   CHROMIUM_PROFILE   a fresh, empty --user-data-dir
//   SCREENSHOT_DIR     where the screenshots go (target/ui)
//
// The tests run in order and share one browser; each asserts exact outcomes against the data the
// gateway serves (the real CSV: 247 GPUs on 31 hosts, 10 metrics each).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.DASHBOARD_URL;
const SHOTS = process.env.SCREENSHOT_DIR;
const PROFILE = process.env.CHROMIUM_PROFILE;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
if (!BASE || !SHOTS || !PROFILE) throw new Error("set DASHBOARD_URL, SCREENSHOT_DIR and CHROMIUM_PROFILE (see scripts/ui-test.sh)");

/** What the real CSV holds. */
const GPUS = 247;
const HOSTS = 31;
const METRICS = 10;
/** The one host of the CSV with 7 GPUs (every other has 8). */
const SMALL_HOST = "mtv5-dgx1-hgpu-012";
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

let context;
let page;
const problems = [];
const foreign = [];

async function api(path) {
  const response = await fetch(`${BASE}${path}`);
  assert.equal(response.status, 200, `${path}: ${await response.clone().text()}`);
  return response.json();
}

async function shot(name, options = {}) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), ...options });
}

/** Every GPU with its latest values, as the API reports them. */
async function fleet() {
  const gpus = [];
  let cursor = null;
  do {
    const body = await api(`/api/v1/latest?limit=100${cursor ? `&cursor=${cursor}` : ""}`);
    gpus.push(...body.gpus);
    cursor = body.next_cursor;
  } while (cursor);
  return gpus;
}

function latest(gpu, metric) {
  return gpu.metrics.find((m) => m.metric_name === metric)?.value;
}

async function openOverview(query = "") {
  await page.goto(`${BASE}/${query}`);
  await page.waitForSelector("body[data-loaded=true]");
}

async function cellCount() {
  return page.locator("#hosts a.gpu").count();
}

async function waitForCells(count) {
  await page.waitForFunction((n) => document.querySelectorAll("#hosts a.gpu").length === n, count);
}

/** Waits until every chart of the GPU page has drawn (or failed). */
async function chartsDrawn() {
  await page.waitForFunction(
    (n) => {
      const charts = [...document.querySelectorAll("figure.chart")];
      return charts.length === n && charts.every((c) => c.dataset.state === "ready" || c.dataset.state === "error");
    },
    METRICS,
    { timeout: 30_000 },
  );
}

/** What each chart shows: points drawn, the path's coordinates, the plot width, its links. */
async function charts() {
  return page.$$eval("figure.chart", (figures) =>
    figures.map((f) => {
      const axis = f.querySelector(".chart-axes line");
      return {
        metric: f.dataset.metric,
        state: f.dataset.state,
        points: Number(f.dataset.points),
        svgPoints: Number(f.querySelector("svg").dataset.points),
        pathPoints: (f.querySelector(".chart-line").getAttribute("d").match(/[ML]/g) || []).length,
        plotWidth: Number(axis.getAttribute("x2")) - Number(axis.getAttribute("x1")),
        step: f.dataset.step,
        unit: f.querySelector(".chart-unit").textContent,
        json: f.querySelector(".json-link").getAttribute("href"),
        promql: f.querySelector(".promql-link").getAttribute("href"),
      };
    }),
  );
}

function stepMs(text) {
  const units = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  const match = /^(\d+)([smhd])$/.exec(text);
  assert.ok(match, `step ${text}`);
  return Number(match[1]) * units[match[2]];
}

/**
 * Checks one chart against the API: the points drawn are the points of its JSON query, which are
 * exactly the step buckets holding raw samples, and there are no more of them than pixels.
 */
async function checkChart(chart, uuid, units) {
  assert.equal(chart.state, "ready", chart.metric);
  assert.ok(chart.points > 0, `${chart.metric} draws points`);
  assert.equal(chart.svgPoints, chart.points, `${chart.metric}: svg`);
  assert.equal(chart.pathPoints, chart.points, `${chart.metric}: path coordinates`);
  const json = new URL(chart.json, BASE);
  assert.equal(json.pathname, `/api/v1/gpus/${uuid}/telemetry`);
  assert.equal(json.searchParams.get("metric_name"), chart.metric);
  assert.equal(json.searchParams.get("step"), chart.step);
  assert.equal(json.searchParams.get("agg"), "avg");
  assert.equal(json.searchParams.get("format"), "series");
  const page = await api(json.pathname + json.search);
  assert.equal(page.next_cursor, null);
  assert.equal(page.count, chart.points, `${chart.metric}: points of the JSON query`);
  assert.deepEqual(page.series.map((s) => s.metric_name), [chart.metric]);
  assert.equal(page.series[0].timestamps_us.length, chart.points, `${chart.metric}: one series`);

  const start = json.searchParams.get("start_time");
  const end = json.searchParams.get("end_time");
  const step = stepMs(chart.step);
  const windowMs = Date.parse(end) - Date.parse(start);
  assert.ok(Math.floor(windowMs / step) + 1 <= chart.plotWidth, `${chart.metric}: ${windowMs} ms at ${chart.step} fits ${chart.plotWidth} px`);
  const raw = await api(`/api/v1/gpus/${uuid}/telemetry?metric_name=${chart.metric}&start_time=${start}&end_time=${end}&limit=10000`);
  assert.equal(raw.next_cursor, null);
  const buckets = new Set(raw.entries.map((e) => Math.floor(Date.parse(e.timestamp) / step)));
  assert.equal(chart.points, buckets.size, `${chart.metric}: one point per bucket with samples`);

  const expectedUnit = { "%": "%", celsius: "°C", W: "W", MHz: "MHz", MiB: null }[units.get(chart.metric)];
  if (expectedUnit === null) assert.match(chart.unit, /^(MiB|GiB)$/, chart.metric);
  else assert.equal(chart.unit, expectedUnit, chart.metric);

  const promql = new URL(chart.promql, BASE);
  assert.equal(promql.pathname, "/api/v1/query_range");
  assert.equal(promql.searchParams.get("query"), `${chart.metric}{UUID="${uuid}"}`);
  assert.equal(Number(promql.searchParams.get("start")) * 1000, Date.parse(start));
  assert.equal(Number(promql.searchParams.get("end")) * 1000, Date.parse(end));
  assert.equal(promql.searchParams.get("step"), chart.step);
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  context = await chromium.launchPersistentContext(PROFILE, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--disable-background-networking",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: DESKTOP,
    locale: "en-GB",
    timezoneId: "UTC",
    colorScheme: "light",
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => message.type() === "error" && problems.push(`console: ${message.text()}`));
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  context.on("request", (request) => {
    if (!request.url().startsWith(BASE)) foreign.push(request.url());
  });
});

after(async () => {
  await context?.close();
});

test("the overview lists every GPU of the real CSV, by host, with its latest values", async () => {
  const gpus = await fleet();
  assert.equal(gpus.length, GPUS);
  await openOverview();
  assert.equal(await page.textContent("#stat-gpus"), String(GPUS));
  assert.equal(await page.textContent("#stat-hosts"), String(HOSTS));
  assert.equal(await page.locator("#hosts > li.host").count(), HOSTS);
  assert.equal(await cellCount(), GPUS);
  assert.equal(await page.textContent("#shown"), `Showing ${GPUS} of ${GPUS} GPUs on ${HOSTS} of ${HOSTS} hosts`);
  for (const gpu of gpus) {
    const cell = page.locator(`li.host[data-host="${gpu.hostname}"] a.gpu[data-uuid="${gpu.uuid}"]`);
    assert.equal(await cell.count(), 1, gpu.uuid);
    assert.equal(await cell.locator(".gpu-util").textContent(), `${latest(gpu, "DCGM_FI_DEV_GPU_UTIL")} %`, gpu.uuid);
    assert.equal(await cell.locator(".gpu-index").textContent(), String(gpu.gpu_id), gpu.uuid);
  }
  // The queue: the collector the script started is its one member, and it has drained it.
  const queue = await api("/api/v1/queue");
  assert.equal(queue.members.length, 1);
  assert.equal(await page.textContent("#stat-collectors"), "1");
  assert.equal(await page.textContent("#stat-depth"), String(queue.depth));
  assert.equal(queue.depth, 0);
  assert.match(await page.textContent("#stat-lag"), /^\d+ (ms|s|min)/);
  await shot("overview");
  await shot("overview-full", { fullPage: true });
});

test("a host filter narrows the grid to that host's GPUs", async () => {
  await page.fill("#filter-host", SMALL_HOST);
  await waitForCells(7);
  assert.equal(await page.locator("#hosts > li.host").count(), 1);
  assert.equal(await page.textContent("#shown"), `Showing 7 of ${GPUS} GPUs on 1 of ${HOSTS} hosts`);
  assert.equal(new URL(page.url()).searchParams.get("host"), SMALL_HOST);
  // The filter survives a reload (it is in the URL).
  await page.reload();
  await page.waitForSelector("body[data-loaded=true]");
  assert.equal(await cellCount(), 7);
  // A substring matches several hosts: -010 to -019.
  await page.fill("#filter-host", "hgpu-01");
  await waitForCells(9 * 8 + 7);
  assert.equal(await page.locator("#hosts > li.host").count(), 10);
  await page.fill("#filter-host", "no-such-host");
  await waitForCells(0);
  assert.equal(await page.textContent("#shown"), "No GPU matches the filters");
  await page.fill("#filter-host", "");
  await waitForCells(GPUS);
  await page.selectOption("#filter-model", "NVIDIA H100 80GB HBM3");
  await waitForCells(GPUS);
  assert.equal(await page.locator("#filter-model option").count(), 2);
});

test("the keyboard reaches a GPU cell and opens its page with Space", async () => {
  await openOverview();
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.className), "skip-link");
  // The busiest GPU by power: its page makes the liveliest screenshot.
  const gpus = await fleet();
  const busiest = gpus.reduce((a, b) => (latest(b, "DCGM_FI_DEV_POWER_USAGE") > latest(a, "DCGM_FI_DEV_POWER_USAGE") ? b : a));
  await page.focus(`a.gpu[data-uuid="${busiest.uuid}"]`);
  await page.keyboard.press("Tab");
  const next = await page.evaluate(() => document.activeElement.dataset.uuid);
  assert.ok(next && next !== busiest.uuid, "Tab moves to the next GPU");
  await page.keyboard.press("Shift+Tab");
  await Promise.all([page.waitForURL(/\/ui\/gpu\.html\?id=/), page.keyboard.press(" ")]);
  assert.equal(new URL(page.url()).searchParams.get("id"), busiest.uuid);
});

test("the GPU page draws a chart per metric, no more points than pixels, with units and links", async () => {
  const uuid = new URL(page.url()).searchParams.get("id");
  const gpu = await api(`/api/v1/gpus/${uuid}`);
  await chartsDrawn();
  assert.equal(await page.textContent("h1"), `GPU ${gpu.gpu_id} on ${gpu.hostname}`);
  const units = new Map((await api("/api/v1/metrics")).metrics.map((m) => [m.name, m.unit]));
  const drawn = await charts();
  assert.deepEqual(drawn.map((c) => c.metric).sort(), [...gpu.metrics].sort());
  assert.equal(drawn.length, METRICS);
  for (const chart of drawn) await checkChart(chart, uuid, units);
  // The default window is the last hour.
  assert.equal(await page.locator("input[name=window]:checked").getAttribute("value"), "1h");

  // Hovering reads a value; the keyboard moves the same cursor.
  const temperature = page.locator('figure.chart[data-metric="DCGM_FI_DEV_GPU_TEMP"]');
  const plot = temperature.locator("svg");
  const box = await plot.boundingBox();
  // Near the right edge, where the newest samples are; hover() scrolls the chart into view.
  await plot.hover({ position: { x: box.width - 20, y: box.height / 2 } });
  const tooltip = temperature.locator(".chart-tooltip");
  await tooltip.waitFor({ state: "visible" });
  assert.match(await tooltip.textContent(), /^\d+(\.\d+)? °C\d{2}:\d{2}:\d{2}/);
  await temperature.locator("svg").focus();
  await page.keyboard.press("Home");
  assert.match(await temperature.locator("[aria-live]").textContent(), /: \d+(\.\d+)? °C/);
  // The screenshot: the top of the page, reading the utilization chart's newest value.
  await page.evaluate(() => {
    document.activeElement.blur();
    window.scrollTo(0, 0);
  });
  const utilization = page.locator('figure.chart[data-metric="DCGM_FI_DEV_GPU_UTIL"]');
  const utilizationBox = await utilization.locator("svg").boundingBox();
  await utilization.locator("svg").hover({ position: { x: utilizationBox.width - 20, y: utilizationBox.height / 2 } });
  await utilization.locator(".chart-tooltip").waitFor({ state: "visible" });
  await shot("gpu");
  await page.mouse.move(0, 0);
  await shot("gpu-full", { fullPage: true });
});

test("the window can be 15 min, 1 h, 6 h, 24 h or a custom range", async () => {
  const uuid = new URL(page.url()).searchParams.get("id");
  const units = new Map((await api("/api/v1/metrics")).metrics.map((m) => [m.name, m.unit]));
  const steps = {};
  for (const window of ["15m", "6h", "24h", "1h"]) {
    await page.click(`label:has(input[value="${window}"])`);
    await page.waitForFunction((w) => new URL(location.href).searchParams.get("window") === w, window);
    await chartsDrawn();
    const drawn = await charts();
    for (const chart of drawn) await checkChart(chart, uuid, units);
    steps[window] = stepMs(drawn[0].step);
  }
  assert.ok(steps["15m"] < steps["1h"] && steps["1h"] < steps["6h"] && steps["6h"] < steps["24h"], JSON.stringify(steps));

  // A custom range: the 30 minutes up to the GPU's last sample.
  const gpu = await api(`/api/v1/gpus/${uuid}`);
  const end = Math.ceil(Date.parse(gpu.last_seen) / 1000) * 1000;
  const local = (ms) => new Date(ms).toISOString().slice(0, 19); // the browser runs in UTC
  await page.click('label:has(input[value="custom"])');
  await page.fill("input[name=start]", local(end - 30 * 60_000));
  await page.fill("input[name=end]", local(end));
  await page.click("#custom-range button[type=submit]");
  await page.waitForFunction(() => new URL(location.href).searchParams.has("start"));
  await chartsDrawn();
  const url = new URL(page.url());
  assert.equal(Date.parse(url.searchParams.get("end")), end);
  assert.equal(Date.parse(url.searchParams.get("start")), end - 30 * 60_000);
  for (const chart of await charts()) {
    await checkChart(chart, uuid, units);
    assert.equal(new URL(chart.json, BASE).searchParams.get("end_time"), new Date(end).toISOString());
  }
});

test("both pages fit a phone's width", async () => {
  const gpuPage = page.url();
  await page.setViewportSize(PHONE);
  await openOverview();
  assert.equal(await cellCount(), GPUS);
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), "no sideways scrolling");
  await shot("overview-phone");
  await page.goto(gpuPage);
  await chartsDrawn();
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), "no sideways scrolling");
  for (const chart of await charts()) assert.ok(chart.points > 0 && chart.points <= chart.plotWidth, chart.metric);
  await shot("gpu-phone");
  await page.setViewportSize(DESKTOP);
});

test("the theme toggle switches to dark and is remembered", async () => {
  await openOverview();
  const light = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(await page.getAttribute("#theme-toggle", "aria-pressed"), "false");
  await page.click("#theme-toggle");
  assert.equal(await page.getAttribute("#theme-toggle", "aria-pressed"), "true");
  assert.equal(await page.getAttribute("html", "data-theme"), "dark");
  await page.reload();
  await page.waitForSelector("body[data-loaded=true]");
  assert.equal(await page.getAttribute("html", "data-theme"), "dark");
  const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(dark, light);
  await shot("overview-dark");
  await page.click("#theme-toggle");
  assert.equal(await page.getAttribute("html", "data-theme"), "light");
});

test("nothing failed in the browser and nothing was fetched from elsewhere", () => {
  assert.deepEqual(problems, []);
  assert.deepEqual(foreign, []);
});
