// The dashboard in a real browser (`make check`; the stack must be up): starts `tools
// dashboard` and a short `tools demo` of its own run (own topics, keys, database and ports),
// and drives Debian's Chromium through playwright-core. It checks that the demo prints the
// dashboard's URL first and a trace link into it, that the live panels move during the run,
// that afterwards every panel of panels.json has data, the map has shaded countries and every
// country of ISO 3166-1 places, the counts equal Redis's, and the demo's trace renders all its
// spans. Screenshots go to target/dashboard/*.png. Bounded: everything within 6 minutes.

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const out = path.join(root, 'target/dashboard');
const tools = process.env.TOOLS ?? path.join(root, 'target/release/tools');
const browserPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const locust = process.env.LOCUST ?? path.join(root, '.stack/venv/bin/locust');
const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379/0';
const jaeger = process.env.JAEGER_URL ?? `http://127.0.0.1:${process.env.JAEGER_UI_PORT ?? 16686}`;
const otlp = process.env.OTEL_EXPORTER_OTLP_ENDPOINT ?? `http://127.0.0.1:${process.env.JAEGER_OTLP_PORT ?? 4317}`;
const deadline = Date.now() + 6 * 60_000;
const children = [];

function fail(message) {
  throw new Error(message);
}

function check(ok, message) {
  if (!ok) fail(message);
  console.log(`  ok  ${message}`);
}

async function until(what, probe, ms = 60_000) {
  const end = Math.min(Date.now() + ms, deadline);
  let last;
  while (Date.now() < end) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  fail(`${what}: not within ${ms / 1000} s (last: ${JSON.stringify(last)})`);
}

/** `promise`, or an error after `ms`. */
function within(what, promise, ms) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms / 1000} s`)), Math.min(ms, deadline - Date.now()));
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function portFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer().once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** `n` consecutive free ports: the runner's four functions and its /metrics, or one. */
async function freePorts(n) {
  for (let i = 0; i < 100; i++) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    const free = await Promise.all([...Array(n).keys()].map((k) => portFree(base + k)));
    if (free.every(Boolean)) return base;
  }
  fail(`no ${n} consecutive free ports`);
}

function start(name, args, env) {
  const log = fs.createWriteStream(path.join(out, `${name}.log`));
  const child = spawn(tools, args, { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.lines = [];
  child.stdout.on('data', (chunk) => {
    log.write(chunk);
    child.lines.push(...chunk.toString().split('\n').filter(Boolean));
  });
  child.stderr.pipe(log);
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal)));
  children.push(child);
  return child;
}

/** A Redis hash or string of this run, found by the end of its name (the keyspace is counter's). */
function redis(run, suffix) {
  const keys = execFileSync('redis-cli', ['-u', redisUrl, '--scan', '--pattern', `*${run}*`]).toString().split('\n');
  const key = keys.find((k) => k.endsWith(`:${suffix}`));
  if (!key) fail(`Redis has no key *${run}*:${suffix} (keys: ${keys.join(' ')})`);
  if (suffix === 'total') return Number(execFileSync('redis-cli', ['-u', redisUrl, 'GET', key]).toString());
  // Not a terminal, so redis-cli answers raw: field and value on lines of their own.
  const flat = execFileSync('redis-cli', ['-u', redisUrl, 'HGETALL', key]).toString().trimEnd().split('\n');
  const hash = {};
  for (let i = 0; i + 1 < flat.length; i += 2) hash[flat[i]] = Number(flat[i + 1]);
  return hash;
}

/** The rendered data of an ECharts panel. */
function option(page, id) {
  return page.evaluate((id) => {
    const o = echarts.getInstanceByDom(document.querySelector(`#panel-${id} .body`)).getOption();
    return { categories: o.yAxis?.[0]?.data, series: o.series.map((s) => s.data) };
  }, id);
}

async function main() {
  for (const [file, what] of [[tools, 'the release build (cargo build --release)'], [browserPath, "Debian's chromium (dev/stack install)"],
    [locust, 'Locust (make demo installs it)'], [path.join(root, 'tools/dashboard/node_modules/playwright-core'), 'npm ci (dev/stack install)']]) {
    if (!fs.existsSync(file)) fail(`${file} is missing: ${what}`);
  }
  fs.mkdirSync(out, { recursive: true });
  const run = `dash${Date.now().toString(36)}`;
  const basePort = await freePorts(5);
  const addr = `127.0.0.1:${await freePorts(1)}`;
  const url = `http://${addr}`;
  const env = {
    ...process.env, RUNNER_RUN_ID: run, RUNNER_BASE_PORT: String(basePort), DASHBOARD_ADDR: addr,
    JAEGER_URL: jaeger, OTEL_EXPORTER_OTLP_ENDPOINT: otlp, LOCUST: locust, REDIS_URL: redisUrl,
  };
  console.log(`dashboard check: run ${run}, dashboard ${url}, functions from port ${basePort}`);

  const dashboard = start('dashboard', ['dashboard'], env);
  await until('the dashboard answers /health', async () => (await fetch(`${url}/health`)).ok, 20_000);

  const browser = await chromium.launch({
    executablePath: browserPath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(url);
    const panels = (await (await fetch(`${url}/panels.json`)).json()).sections.flatMap((s) => s.panels.map((p) => p.id));
    await until('the page lays out every panel', async () => (await page.locator('.panel').count()) === panels.length);

    const demo = start('demo', ['demo', '--users', '10', '--user-rps', '10', '--bursts', '1', '--burst-seconds', '12',
      '--out', 'target/dashboard/demo'], env);
    const first = await until('the demo prints the dashboard', () => demo.lines.length > 0 && demo.lines[0], 30_000);
    check(first === `Dashboard: ${url} (already running)`, `the demo's first line is the dashboard's URL: ${first}`);

    for (const id of ['accepted', 'p99', 'replicas']) {
      await until(`live panel ${id} has data during the run`,
        () => page.getAttribute(`#panel-${id}`, 'data-state').then((s) => s === 'ok'), 90_000);
    }
    check(true, 'accepted/s, p99 and replicas move during the run');
    await page.screenshot({ path: path.join(out, 'dashboard-live.png') });

    const code = await within('the demo ends', demo.exited, 240_000);
    check(code === 0, `the demo passed its audit (exit ${code}; its output: target/dashboard/demo.log)`);
    const link = demo.lines.map((l) => l.match(/^\s*a trace\s+(\S+)$/)?.[1]).find(Boolean);
    check(link?.startsWith(`${url}/trace/`), `the demo's trace link opens the dashboard: ${link}`);

    const total = redis(run, 'total');
    check(total > 0, `Redis counted ${total} tweets`);
    await until('the page shows Redis\'s total', async () =>
      Number(await page.getAttribute('#panel-total .body', 'data-value')) === total, 20_000);
    check(true, `"Tweets counted" shows ${total}, as Redis`);
    for (const id of panels) {
      await until(`panel ${id} has data`, () => page.getAttribute(`#panel-${id}`, 'data-state').then((s) => s === 'ok'), 30_000);
    }
    check(true, `every panel has data: ${panels.join(', ')}`);

    const countries = redis(run, 'countries');
    const bars = await option(page, 'countries');
    check(bars.categories.length > 0 && bars.categories.every((c, i) => countries[c] === bars.series[0][i]),
      `"Tweets by country" shows Redis's counts (${bars.categories.length} countries)`);
    const climas = redis(run, 'climas');
    const pie = Object.fromEntries((await option(page, 'climas')).series[0].map((d) => [d.name, d.value]));
    check(JSON.stringify(Object.entries(pie).sort()) === JSON.stringify(Object.entries(climas).sort()),
      `"Tweets by weather condition" equals Redis's: ${JSON.stringify(climas)}`);
    const pairs = redis(run, 'country-clima');
    const stacked = await option(page, 'country_clima');
    const names = await page.evaluate(() => echarts.getInstanceByDom(document.querySelector('#panel-country_clima .body')).getOption().series.map((s) => s.name));
    check(stacked.categories.every((c) => names.every((n, i) => (pairs[`${c}/${n}`] ?? 0) === stacked.series[i][stacked.categories.indexOf(c)])),
      '"Tweets by country and condition" equals Redis\'s');

    const map = await page.evaluate(() => ({ ...document.querySelector('#panel-map').dataset }));
    // ECharts lists every shape of the map; those without tweets have no value.
    const shadedSum = (await option(page, 'map')).series[0].reduce((n, d) => n + (d.value ?? 0), 0);
    check(Number(map.shaded) > 0, `the map shades ${map.shaded} countries`);
    check(map.placed === '249' && map.unplaced === '', `all 249 countries of ISO 3166-1 place on the map (unplaced: "${map.unplaced}")`);
    check(shadedSum === total, `the map's shading adds up to Redis's total (${shadedSum})`);
    await page.screenshot({ path: path.join(out, 'dashboard.png'), fullPage: true });

    const id = link.split('/').pop();
    const spans = await until('Jaeger has the whole trace (12 spans)', async () => {
      const json = await (await fetch(`${jaeger}/api/traces/${id}`)).json();
      const trace = json.data?.[0];
      return trace?.spans.length >= 12 && trace;
    }, 30_000);
    await page.goto(link);
    await page.waitForSelector('#waterfall[data-spans]', { timeout: 20_000 });
    const drawn = Number(await page.getAttribute('#waterfall', 'data-spans'));
    check(drawn === spans.spans.length, `the trace view draws all ${spans.spans.length} spans of trace ${id}`);
    const services = new Set(await page.locator('#waterfall .service').allTextContents());
    check(['ingest', 'producer', 'runner', 'counter', 'archiver'].every((s) => services.has(s)),
      `the trace crosses ${[...services].join(', ')}`);
    await page.locator('#waterfall .span:not(.axis) .name').first().click();
    check(await page.locator('.details:not([hidden]) .attributes tr').count() > 0, 'a span shows its attributes');
    await page.screenshot({ path: path.join(out, 'trace.png'), fullPage: true });
    check(errors.length === 0, `no script error on the pages ${errors.join('; ')}`);
    console.log(`dashboard check passed; screenshots in ${path.relative(root, out)}/`);
  } finally {
    await browser.close();
    dashboard.kill('SIGTERM');
  }
}

main().catch((e) => {
  console.error(`dashboard check FAILED: ${e.message}`);
  for (const child of children) child.kill('SIGTERM');
  process.exit(1);
});
