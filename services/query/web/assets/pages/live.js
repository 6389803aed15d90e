// Live: the project's runs in progress, filling in as events arrive over /v1/stream.
import { useEffect, useState } from '../vendor/hooks.mjs';
import { html, api, ErrorBox, Loading } from '../api.js';
import { RunRow } from './runs.js';
import { useStream, Connection } from './stream.js';

const KEEP_FINISHED_MS = 60000; // a finished run stays on the page a minute, with its final status

export function Live({ project }) {
  const [runs, setRuns] = useState(null); // id -> execution
  const [error, setError] = useState(null);
  const base = `/p/${encodeURIComponent(project)}`;
  const refetch = () => api('executions', { project, status: 'running', limit: 200 })
    .then((page) => setRuns(Object.fromEntries(page.items.map((e) => [e.id, e]))), setError);
  const fetchOne = (id) => api(`executions/${encodeURIComponent(id)}`, { project })
    .then((e) => setRuns((rs) => ({ ...rs, [id]: { ...e, ...(rs && rs[id] && rs[id].status !== 'running' ? { status: rs[id].status } : {}) } })), () => {});
  useEffect(() => { refetch(); }, [project]);

  const conn = useStream({ project }, (type, ev) => {
    if (type === 'reset') { refetch(); return; }
    const id = ev.execution_id;
    if (type === 'execution.started') {
      const d = ev.data;
      setRuns((rs) => ({ ...rs, [id]: { id, project, name: d.name, environment: d.environment, branch: d.branch, commit: d.commit, build_url: d.build_url,
        status: 'running', started_at: d.started_at, total: 0, duration_ms: 0, counts: { passed: 0, failed: 0, error: 0, skipped: 0 } } }));
      return;
    }
    if (type === 'results.recorded') {
      const t = ev.data.totals || {};
      setRuns((rs) => {
        const e = rs && rs[id];
        if (!e) { fetchOne(id); return rs; } // started before the page opened
        const counts = { passed: t.passed ?? e.counts.passed, failed: t.failed ?? e.counts.failed, error: t.error ?? e.counts.error, skipped: t.skipped ?? e.counts.skipped };
        return { ...rs, [id]: { ...e, counts, total: t.total ?? counts.passed + counts.failed + counts.error + counts.skipped } };
      });
      return;
    }
    if (type === 'execution.finished') {
      setRuns((rs) => (rs && rs[id] ? { ...rs, [id]: { ...rs[id], status: ev.data.status, finished_at: ev.data.finished_at, duration_ms: ev.data.duration_ms ?? rs[id].duration_ms } } : rs));
      setTimeout(() => setRuns((rs) => { if (!rs) return rs; const { [id]: _, ...rest } = rs; return rest; }), KEEP_FINISHED_MS);
    }
  });

  const list = runs ? Object.values(runs).sort((a, b) => (a.started_at < b.started_at ? 1 : -1)) : [];
  return html`<h1>Live <${Connection} state=${conn} /></h1>
    <${ErrorBox} error=${error} />
    ${!runs ? html`<${Loading} />` : list.length === 0 ? html`<div class="empty" data-ready="live"><p>No run in progress.</p>
      <p>Runs appear here the moment a harness starts one (<code>POST /v1/executions</code>), and their counters move as results arrive.</p></div>` : html`
    <table class="list runs" data-ready="live"><thead><tr><th>Status</th><th>Run</th><th>Counts</th><th class="n">Duration</th><th>Started</th><th>Build</th></tr></thead>
      <tbody>${list.map((e) => html`<${RunRow} e=${e} base=${base} />`)}</tbody></table>`}`;
}
