// Trends: pass rate and executions per hour/day/week (uPlot), hover for a bucket's numbers, click a
// bucket (or its row in the table under the chart) to see its runs.
import { useEffect, useRef, useState } from '../vendor/hooks.mjs';
import { html, query, href, navigate, useApi, rangeParams, filterParams, pct, num, dur, when, ErrorBox, Loading } from '../api.js';
import { Filters } from './filters.js';

const SPAN = { hour: 3600e3, day: 86400e3, week: 7 * 86400e3 };

function Chart({ buckets, bucket, onPick, onHover }) {
  const el = useRef(null);
  useEffect(() => {
    if (!window.uPlot || !el.current) return undefined;
    const css = getComputedStyle(document.documentElement);
    const fg = css.getPropertyValue('--fg').trim() || '#222';
    const xs = buckets.map((b) => new Date(b.start).getTime() / 1000);
    const data = [xs, buckets.map((b) => (b.pass_rate === null ? null : b.pass_rate * 100)), buckets.map((b) => b.executions)];
    let last = null; // the bucket under the pointer when it last was over one
    const opts = {
      width: el.current.clientWidth || 800, height: 280,
      scales: { x: { time: true }, pct: { range: [0, 100] }, n: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [{ stroke: fg }, { scale: 'pct', stroke: fg, label: 'pass rate %', values: (u, v) => v.map((x) => x + ' %') },
        { scale: 'n', side: 1, stroke: fg, label: 'executions', grid: { show: false } }],
      series: [{}, { label: 'pass rate', scale: 'pct', stroke: css.getPropertyValue('--pass').trim(), width: 2, spanGaps: false, value: (u, v) => (v === null ? '—' : v.toFixed(1) + ' %') },
        { label: 'executions', scale: 'n', stroke: css.getPropertyValue('--accent').trim(), fill: css.getPropertyValue('--accent-fill').trim(), paths: window.uPlot.paths.bars({ size: [0.6, 40] }), points: { show: false } }],
      cursor: { points: { size: 8 } },
      hooks: { setCursor: [(u) => { if (u.cursor.idx !== null && u.cursor.idx !== undefined) last = u.cursor.idx; onHover(u.cursor.idx); }] },
    };
    const u = new window.uPlot(opts, data, el.current);
    el.current.uplot = u; // the browser tests read what was drawn
    const click = () => { if (last !== null) onPick(last); };
    el.current.addEventListener('click', click, true); // capture: uPlot handles clicks on its overlay itself
    const resize = () => u.setSize({ width: el.current.clientWidth, height: 280 });
    addEventListener('resize', resize);
    const host = el.current;
    return () => { removeEventListener('resize', resize); host.removeEventListener('click', click, true); u.destroy(); };
  }, [buckets]);
  return html`<div class="chart" ref=${el} role="img" aria-label=${`pass rate and executions per ${bucket}; the table below has the same numbers`}></div>`;
}

export function Trends({ project }) {
  const q = query();
  const bucket = SPAN[q.bucket] ? q.bucket : (q.range === '24h' ? 'hour' : 'day');
  const params = { project, ...rangeParams(q), ...filterParams(q), bucket };
  const { data, error, loading } = useApi('trends', params, JSON.stringify(params));
  const [hover, setHover] = useState(null);
  const base = `/p/${encodeURIComponent(project)}`;
  const runsOf = (b) => href(`${base}/runs`, { ...filterParams(q), from: b.start, to: new Date(new Date(b.start).getTime() + SPAN[bucket]).toISOString() });
  const pick = (i) => navigate(runsOf(data.buckets[i]));
  const h = data && hover !== null && hover !== undefined ? data.buckets[hover] : null;
  const bucketSelect = html`<label>Per <select value=${bucket} onChange=${(e) => navigate(href(location.pathname, { ...q, bucket: e.target.value }))}>
    <option value="hour">hour</option><option value="day">day</option><option value="week">week</option></select></label>`;
  return html`<h1>Trends</h1>
    <${Filters} extra=${bucketSelect} />
    <${ErrorBox} error=${error} />
    ${loading && !data ? html`<${Loading} />` : null}
    ${data ? html`<section data-from=${data.range.from} data-to=${data.range.to} data-bucket=${data.bucket}>
      <${Chart} buckets=${data.buckets} bucket=${bucket} onPick=${pick} onHover=${setHover} />
      <p class="readout" aria-live="polite" data-k="readout">${h ? html`<strong>${when(h.start)}</strong>: ${num(h.executions)} executions,
        pass rate ${pct(h.pass_rate)}, ${num(h.results_by_status.failed + h.results_by_status.error)} failed/error results, p95 ${dur(h.duration_p95_ms)} — click for its runs`
        : 'Hover over the chart for a bucket\'s numbers; click to see its runs.'}</p>
      <details class="buckets"><summary>Table (${data.buckets.length} buckets)</summary>
      <table class="list" data-ready="trends"><thead><tr><th>Bucket (UTC)</th><th class="n">Executions</th><th class="n">Pass rate</th><th class="n">Failed + error</th><th class="n">p50</th><th class="n">p95</th></tr></thead>
        <tbody>${data.buckets.slice().reverse().map((b) => html`<tr><td><a href=${runsOf(b)}>${when(b.start)}</a></td><td class="n">${num(b.executions)}</td>
          <td class="n">${pct(b.pass_rate)}</td><td class="n">${num(b.results_by_status.failed + b.results_by_status.error)}</td><td class="n">${dur(b.duration_p50_ms)}</td><td class="n">${dur(b.duration_p95_ms)}</td></tr>`)}</tbody></table></details></section>` : null}`;
}
