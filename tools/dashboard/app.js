// The dashboard page: its panels come from panels.json, its data from the tools' server —
// /api/live every second (the run's counts and the live series), /api/traces every 5 s,
// /api/energy every minute. Each panel's element carries data-state="ok" once it shows data
// (check.mjs waits for it).

/* global echarts, topojson */

const LIVE_MS = 1000;
const TRACES_MS = 5000;
const ENERGY_MS = 60000;
const TOP_COUNTRIES = 20;
const TOP_PAIRS = 12;

// ISO 3166-1 countries that Natural Earth (world-atlas) draws inside another shape rather than
// as their own: their tweets shade that shape, and its tooltip names them.
const DRAWN_WITHIN = {
  BQ: '528', // Caribbean Netherlands: Netherlands
  BV: '578', SJ: '578', // Bouvet Island, Svalbard and Jan Mayen: Norway
  GF: '250', GP: '250', MQ: '250', RE: '250', YT: '250', // French overseas departments: France
  TK: '554', // Tokelau: New Zealand
  CC: 'Indian Ocean Ter.', CX: 'Indian Ocean Ter.', // Cocos (Keeling) and Christmas Islands
};

const charts = {};
const panelsById = {};
let since = 0;
let points = [];
let lastCounts = '';

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

function status(text, bad = false) {
  const s = document.getElementById('status');
  s.textContent = text;
  s.classList.toggle('bad', bad);
}

async function getJson(url) {
  const answer = await fetch(url);
  const body = await answer.json().catch(() => ({ error: `${answer.status} ${answer.statusText}` }));
  if (!answer.ok) throw new Error(body.error || `${url}: ${answer.status}`);
  return body;
}

function chart(id) {
  if (!charts[id]) {
    charts[id] = echarts.init(panelsById[id].querySelector('.body'), 'dark', { renderer: 'canvas' });
    new ResizeObserver(() => charts[id].resize()).observe(panelsById[id].querySelector('.body'));
  }
  return charts[id];
}

function done(id, ok, detail) {
  const panel = panelsById[id];
  panel.dataset.state = ok ? 'ok' : 'empty';
  if (detail !== undefined) panel.querySelector('.detail').textContent = detail;
}

const BASE = { backgroundColor: 'transparent', animation: false, textStyle: { fontFamily: 'inherit' } };
const GRID = { left: 8, right: 16, top: 28, bottom: 8, containLabel: true };

function layout(spec) {
  document.getElementById('about').textContent = spec.about;
  const sections = document.getElementById('sections');
  for (const section of spec.sections) {
    const grid = el('div', { class: 'grid' });
    sections.append(el('section', {}, el('h2', {}, section.title), grid));
    for (const p of section.panels) {
      const mirror = p.mirrors.length ? `Grafana: ${p.mirrors.join(', ')}` : '';
      const caption = [p.note, mirror].filter(Boolean).join(' · ');
      const panel = el('div', { class: `panel ${p.kind}`, id: `panel-${p.id}`, 'data-state': 'empty' },
        el('h3', {}, p.title), el('p', { class: 'caption' }, caption),
        el('div', { class: 'body' }), el('p', { class: 'detail' }));
      panelsById[p.id] = panel;
      grid.append(panel);
    }
  }
}

// --- the world map ---------------------------------------------------------------------------

let countries = [];
const countryByAlpha2 = {};
let placeOf = {};

async function loadMap() {
  const [atlas, table] = await Promise.all([getJson('/vendor/countries-10m.json'), getJson('/api/countries')]);
  const world = topojson.feature(atlas, atlas.objects.countries);
  for (const f of world.features) {
    f.properties.shape = f.id || f.properties.name;
    flatten(f.geometry);
  }
  echarts.registerMap('world', world);
  const shapes = new Set(world.features.map((f) => f.properties.shape));
  countries = table;
  placeOf = {};
  const unplaced = [];
  for (const c of table) {
    countryByAlpha2[c.alpha2] = c;
    const shape = shapes.has(c.numeric) ? c.numeric : DRAWN_WITHIN[c.alpha2];
    if (shape && shapes.has(shape)) placeOf[c.alpha2] = shape;
    else unplaced.push(c.alpha2);
  }
  panelsById.map.dataset.placed = String(Object.keys(placeOf).length);
  panelsById.map.dataset.unplaced = unplaced.join(' ');
}

// world-atlas joins shapes across the antimeridian (for spherical projections); on ECharts'
// flat map such a ring would cross the whole world. Each ring is made continuous, then what
// lies beyond ±180° is pressed onto the edge.
function flatten(geometry) {
  if (!geometry) return;
  const polygons = geometry.type === 'Polygon' ? [geometry.coordinates] : geometry.coordinates;
  for (const ring of polygons.flat()) {
    for (let i = 1; i < ring.length; i++) {
      const jump = ring[i][0] - ring[i - 1][0];
      if (Math.abs(jump) > 180) ring[i][0] -= 360 * Math.sign(jump);
    }
    for (const point of ring) point[0] = Math.max(-180, Math.min(180, point[0]));
  }
}

function drawMap(codes) {
  const byShape = {};
  for (const [alpha2, n] of Object.entries(codes)) {
    const shape = placeOf[alpha2];
    if (!shape) continue;
    const entry = (byShape[shape] ||= { name: shape, value: 0, label: [] });
    entry.value += n;
    entry.label.push(`${countryByAlpha2[alpha2]?.en ?? alpha2} ${n}`);
  }
  const data = Object.values(byShape);
  const max = Math.max(1, ...data.map((d) => d.value));
  chart('map').setOption({
    ...BASE,
    tooltip: { trigger: 'item', formatter: (p) => (p.data ? p.data.label.join('<br>') : p.name) },
    visualMap: { min: 0, max, left: 8, bottom: 8, calculable: false, itemHeight: 80,
      inRange: { color: ['#1f3b57', '#3274d9', '#8ab8ff', '#ffffff'] }, textStyle: { color: '#ccc' } },
    series: [{ type: 'map', map: 'world', nameProperty: 'shape', roam: true, data,
      itemStyle: { areaColor: '#2b2f36', borderColor: '#111217', borderWidth: 0.3 },
      emphasis: { label: { show: false }, itemStyle: { areaColor: '#f2cc0c' } } }],
  }, true);
  panelsById.map.dataset.shaded = String(data.length);
  done('map', data.length > 0, `${data.length} shapes shaded; all ${Object.keys(placeOf).length} countries of ISO 3166-1 place`);
}

// --- the counts ------------------------------------------------------------------------------

function sorted(hash) {
  return Object.entries(hash).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

function drawCounts(counted) {
  const total = panelsById.total.querySelector('.body');
  total.textContent = counted.total.toLocaleString('en');
  total.dataset.value = String(counted.total);
  done('total', true);

  const top = sorted(counted.countries).slice(0, TOP_COUNTRIES).reverse();
  chart('countries').setOption({
    ...BASE, grid: GRID, tooltip: {},
    xAxis: { type: 'value' }, yAxis: { type: 'category', data: top.map(([k]) => k) },
    series: [{ type: 'bar', data: top.map(([, n]) => n), itemStyle: { color: '#73bf69' },
      label: { show: true, position: 'right' } }],
  }, true);
  const more = Object.keys(counted.countries).length - top.length;
  done('countries', top.length > 0, more > 0 ? `the top ${top.length}; ${more} more countries` : '');

  const climas = sorted(counted.climas);
  chart('climas').setOption({
    ...BASE, tooltip: { trigger: 'item' }, legend: { bottom: 0, type: 'scroll' },
    series: [{ type: 'pie', radius: ['35%', '70%'], center: ['50%', '45%'],
      data: climas.map(([name, value]) => ({ name, value })), label: { formatter: '{b}: {c}' } }],
  }, true);
  done('climas', climas.length > 0);

  const pairs = {};
  const conditions = new Set();
  for (const [key, n] of Object.entries(counted.country_clima)) {
    const cut = key.lastIndexOf('/');
    const [country, clima] = [key.slice(0, cut), key.slice(cut + 1)];
    (pairs[country] ||= {})[clima] = n;
    conditions.add(clima);
  }
  const shown = sorted(counted.countries).slice(0, TOP_PAIRS).map(([k]) => k).reverse();
  chart('country_clima').setOption({
    ...BASE, grid: { ...GRID, top: 40 }, tooltip: { trigger: 'axis' }, legend: { top: 0, type: 'scroll' },
    xAxis: { type: 'value' }, yAxis: { type: 'category', data: shown },
    series: [...conditions].sort().map((clima) => ({
      name: clima, type: 'bar', stack: 'all', data: shown.map((c) => pairs[c]?.[clima] ?? 0),
    })),
  }, true);
  done('country_clima', shown.length > 0, shown.length ? `the top ${shown.length} countries` : '');

  drawMap(counted.country_codes);
}

// --- the live series -------------------------------------------------------------------------

function series(id, lines, unit) {
  chart(id).setOption({
    ...BASE, grid: { ...GRID, top: lines.length > 1 ? 40 : 28 }, tooltip: { trigger: 'axis' },
    legend: lines.length > 1 ? { top: 0, type: 'scroll' } : undefined,
    xAxis: { type: 'time', splitNumber: 4, axisLabel: { hideOverlap: true } },
    yAxis: { type: 'value', name: unit, minInterval: unit === 'ms' ? 0 : 1 },
    series: lines.map(([name, data, step]) => ({ name, type: 'line', showSymbol: false, step: step ? 'end' : false, data })),
  }, true);
  done(id, lines.some(([, data]) => data.length > 0));
}

function drawSeries(functions) {
  const withRunner = points.filter((p) => p.runner);
  series('accepted', [['accepted/s', withRunner.map((p) => [p.t_ms, Math.round(p.runner.accepted_per_s)])]], 'tweets/s');
  series('p99', [['p99', withRunner.filter((p) => p.runner.p99_ms != null).map((p) => [p.t_ms, +p.runner.p99_ms.toFixed(1)])]], 'ms');
  series('lag', [['lag', points.map((p) => [p.t_ms, p.lag])]], 'records');
  series('delivered', [
    ['in Kafka', points.map((p) => [p.t_ms, p.in_kafka])],
    ['counted', points.map((p) => [p.t_ms, p.counted])],
    ['archived', points.map((p) => [p.t_ms, p.archived])],
  ], 'tweets');
  series('replicas', functions.map((f) => [f, withRunner.map((p) => [p.t_ms, p.runner.replicas[f] ?? 0]), true]), 'processes');
  const latest = points[points.length - 1];
  const dead = panelsById.dead_letters.querySelector('.body');
  dead.textContent = latest.dead_lettered.toLocaleString('en');
  dead.dataset.value = String(latest.dead_lettered);
  done('dead_letters', true);
  if (!withRunner.length) {
    for (const id of ['accepted', 'p99', 'replicas']) {
      panelsById[id].querySelector('.detail').textContent = 'no runner: start a run (`make demo`)';
    }
  }
}

async function pollLive() {
  try {
    const live = await getJson(`/api/live?since=${since}`);
    document.getElementById('run').textContent = live.run_id ? `· run ${live.run_id}` : '';
    points = points.concat(live.points).slice(-900);
    if (live.points.length) since = live.points[live.points.length - 1].seq;
    const counts = JSON.stringify(live.counted);
    if (counts !== lastCounts) {
      drawCounts(live.counted);
      lastCounts = counts;
    }
    if (points.length) drawSeries(live.functions);
    const latest = points[points.length - 1];
    status(latest?.runner ? 'Live: a run is going on' : 'The last run (no runner is serving now)');
  } catch (e) {
    status(`Cannot read the pipeline: ${e.message}`, true);
  }
}

// --- energy and traces -----------------------------------------------------------------------

async function pollEnergy() {
  try {
    const energy = await getJson('/api/energy');
    const components = [...new Set(energy.modes.flatMap((m) => Object.keys(m.energy_j)))]
      .sort((a, b) => Math.max(...energy.modes.map((m) => m.energy_j[b] ?? 0)) - Math.max(...energy.modes.map((m) => m.energy_j[a] ?? 0)));
    chart('energy').setOption({
      ...BASE, grid: { ...GRID, top: 40 }, tooltip: { trigger: 'axis', valueFormatter: (v) => `${v.toFixed(1)} J` },
      legend: { top: 0 }, xAxis: { type: 'category', data: components, axisLabel: { rotate: 30 } },
      yAxis: { type: 'value', name: 'J' },
      series: energy.modes.map((m) => ({ name: m.mode, type: 'bar', data: components.map((c) => +(m.energy_j[c] ?? 0).toFixed(2)) })),
    }, true);
    const totals = energy.modes.map((m) => `${m.mode}: ${m.total_j.toFixed(0)} J` +
      (m.j_per_1000_tweets ? `, ${m.j_per_1000_tweets.toFixed(1)} J per 1,000 tweets` : '') + ` (${m.energy_source})`);
    done('energy', components.length > 0, `${energy.report} — ${totals.join('; ')}`);
  } catch (e) {
    done('energy', false, e.message);
  }
}

function traceTable(id, list) {
  const body = panelsById[id].querySelector('.body');
  const rows = list.map((t) => el('tr', {},
    el('td', {}, el('a', { href: `/trace/${t.trace_id}` }, t.trace_id.slice(0, 16) + '…')),
    el('td', {}, new Date(t.start_ms).toLocaleTimeString('en-GB')),
    el('td', { class: 'num' }, `${t.duration_ms.toFixed(1)} ms`),
    el('td', { class: 'num' }, String(t.spans)),
    el('td', {}, t.services.join(', '))));
  body.replaceChildren(el('table', {},
    el('thead', {}, el('tr', {}, ...['trace', 'start', 'duration', 'spans', 'services'].map((h) => el('th', {}, h)))),
    el('tbody', {}, ...rows)));
  done(id, rows.length > 0);
}

async function pollTraces() {
  try {
    const traces = await getJson('/api/traces');
    traceTable('recent_traces', traces.recent);
    traceTable('slowest_traces', traces.slowest);
    const from = `of the last ${traces.searched} in ${traces.jaeger}`;
    panelsById.slowest_traces.querySelector('.detail').textContent = `the slowest ${from}, first span to last`;
    panelsById.recent_traces.querySelector('.detail').textContent = traces.searched ? '' : 'no trace of this run yet';
  } catch (e) {
    done('recent_traces', false, e.message);
    done('slowest_traces', false, e.message);
  }
}

function every(ms, poll) {
  const loop = async () => {
    await poll();
    setTimeout(loop, ms);
  };
  loop();
}

layout(await getJson('/panels.json'));
await loadMap().catch((e) => done('map', false, `the map: ${e.message}`));
every(LIVE_MS, pollLive);
every(TRACES_MS, pollTraces);
every(ENERGY_MS, pollEnergy);
