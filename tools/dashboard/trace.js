// One trace as a waterfall: every span of Jaeger's answer (/api/trace/<id>, which the tools'
// server reads from the stack's Jaeger) under its parent, placed by its start and length on
// the trace's time line, its attributes a click away. The waterfall carries data-spans with
// the number of rows drawn (check.mjs compares it with Jaeger's).

const COLOURS = {
  ingest: '#73bf69', producer: '#5794f2', runner: '#b877d9', counter: '#ff9830', archiver: '#f2cc0c',
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'style') e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

const ms = (us) => `${(us / 1000).toFixed(us < 10000 ? 2 : 1)} ms`;

/** Spans in tree order (each after its parent, siblings by start) with their depth. */
function tree(spans) {
  const ids = new Set(spans.map((s) => s.spanID));
  const parentOf = (s) => (s.references || []).map((r) => r.spanID).find((id) => ids.has(id));
  const children = new Map();
  for (const s of spans) {
    const p = parentOf(s) ?? null;
    if (!children.has(p)) children.set(p, []);
    children.get(p).push(s);
  }
  for (const list of children.values()) list.sort((a, b) => a.startTime - b.startTime);
  const out = [];
  const walk = (parent, depth) => {
    for (const s of children.get(parent) || []) {
      out.push([s, depth]);
      walk(s.spanID, depth + 1);
    }
  };
  walk(null, 0);
  return out;
}

function attributes(span, process, offset) {
  const rows = [
    ['start', `+${ms(offset)} after the trace's first span`],
    ['span id', span.spanID],
    ...(span.tags || []).map((t) => [t.key, t.value]),
    ...(process.tags || []).map((t) => [`resource ${t.key}`, t.value]),
  ];
  for (const log of span.logs || []) {
    for (const f of log.fields || []) rows.push([`event ${f.key}`, f.value]);
  }
  return el('table', { class: 'attributes' },
    el('tbody', {}, ...rows.map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, String(v))))));
}

async function main() {
  const id = decodeURIComponent(location.pathname.split('/').pop());
  document.getElementById('trace-id').textContent = id;
  const summary = document.getElementById('summary');
  const answer = await fetch(`/api/trace/${encodeURIComponent(id)}`);
  const json = await answer.json().catch(() => ({}));
  const trace = json.data?.[0];
  if (!answer.ok || !trace) {
    summary.textContent = `No trace ${id}: ${json.error || json.errors?.[0]?.msg || 'Jaeger has none'}`;
    summary.classList.add('bad');
    return;
  }
  const spans = trace.spans;
  const start = Math.min(...spans.map((s) => s.startTime));
  const end = Math.max(...spans.map((s) => s.startTime + s.duration));
  const total = Math.max(1, end - start);
  const services = [...new Set(spans.map((s) => trace.processes[s.processID]?.serviceName))];
  summary.textContent = `${spans.length} spans across ${services.join(', ')} · ${ms(total)} from the first span's start to the last one's end · started ${new Date(start / 1000).toISOString()}`;

  const ordered = tree(spans);
  const rows = ordered.map(([span, depth]) => {
    const process = trace.processes[span.processID] || {};
    const service = process.serviceName || '?';
    const colour = COLOURS[service] || '#8e8e8e';
    const left = ((span.startTime - start) / total) * 100;
    const width = Math.max(0.2, (span.duration / total) * 100);
    const error = (span.tags || []).some((t) => (t.key === 'error' && t.value === true) || (t.key === 'otel.status_code' && t.value === 'ERROR'));
    const details = el('div', { class: 'details', hidden: '' }, attributes(span, process, span.startTime - start));
    const row = el('div', { class: `span${error ? ' error' : ''}`, 'data-span': span.spanID },
      el('div', { class: 'name', style: `padding-left: ${8 + depth * 14}px` },
        el('span', { class: 'service', style: `color: ${colour}` }, service), ' ', span.operationName),
      el('div', { class: 'lane' },
        el('div', { class: 'bar', style: `left: ${left}%; width: ${width}%; background: ${colour}` }),
        // The duration after the bar, or before it when the bar reaches the right edge.
        el('span', { class: 'duration', style: left + width > 80 ? `right: ${100 - left}%` : `left: ${left + width}%` },
          ms(span.duration))),
      details);
    row.querySelector('.name').addEventListener('click', () => details.toggleAttribute('hidden'));
    return row;
  });
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => el('span', { style: `left: ${f * 100}%` }, ms(f * total)));
  ticks[ticks.length - 1].classList.add('last');
  const waterfall = document.getElementById('waterfall');
  waterfall.replaceChildren(
    el('div', { class: 'span axis' }, el('div', { class: 'name' }, 'service · operation (click for attributes)'), el('div', { class: 'lane' }, ...ticks)),
    ...rows);
  waterfall.dataset.spans = String(rows.length);
}

main();
