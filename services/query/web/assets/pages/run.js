// Run detail: header with status and counts, results with their attempts, errors and attachments;
// live over /v1/stream while the run is going, with the connection state on screen.
import { useEffect, useRef, useState } from '../vendor/hooks.mjs';
import { html, api, query, href, navigate, num, dur, when, ErrorBox, Loading, Status } from '../api.js';
import { Counts } from './runs.js';
import { useStream, Connection } from './stream.js';

const PAGE = 200;
const FILTERS = [['', 'all'], ['failed,error', 'failed + error'], ['failed', 'failed'], ['error', 'error'], ['skipped', 'skipped'], ['passed', 'passed']];

function Attachment({ a, project }) {
  if (!a || typeof a !== 'object') return null;
  const type = a.content_type || '';
  const label = a.name || a.kind || type || 'attachment';
  if (a.id) {
    const url = `/v1/attachments/${encodeURIComponent(a.id)}?project=${encodeURIComponent(project)}`;
    if (type.startsWith('image/')) return html`<a class="att" href=${url} target="_blank" rel="noopener"><img src=${url} alt=${label} loading="lazy" /></a>`;
    if (type.startsWith('video/')) return html`<video class="att" src=${url} controls preload="metadata" aria-label=${label}></video>`;
    return html`<a class="att" href=${url} download>${label} ↓</a>`;
  }
  if (a.uri && /^https?:\/\//.test(a.uri)) return html`<a class="att" href=${a.uri} rel="noopener noreferrer" target="_blank">${label}</a>`;
  return a.uri ? html`<span class="att uri" title=${label}>${a.uri}</span>` : null;
}

function Attempt({ r, project, last }) {
  const hasError = r.error_message || r.error_trace || r.error_type;
  const atts = Array.isArray(r.attachments) ? r.attachments : [];
  return html`<div class="attempt ${last ? 'final' : 'retry'}">
    <${Status} status=${r.status} /> <span class="sub">attempt ${r.attempt}${last ? '' : ' (retried)'} · ${dur(r.duration_ms)}</span>
    ${hasError ? html`<details><summary>${r.error_type ? html`<code>${r.error_type}</code> ` : null}${(r.error_message || '').split('\n')[0].slice(0, 200) || 'error'}</summary>
      ${r.error_message ? html`<pre class="msg">${r.error_message}</pre>` : null}
      ${r.error_trace ? html`<pre class="trace">${r.error_trace}</pre>` : null}</details>` : null}
    ${atts.length ? html`<div class="atts">${atts.map((a) => html`<${Attachment} a=${a} project=${project} />`)}</div>` : null}
  </div>`;
}

// Attempts arrive ordered by (test_id, attempt): consecutive rows of one test form its group.
function group(items) {
  const out = [];
  for (const r of items) {
    const g = out[out.length - 1];
    if (g && g.test_id === r.test_id) g.attempts.push(r); else out.push({ test_id: r.test_id, attempts: [r] });
  }
  return out;
}

export function Run({ project, arg: id }) {
  const q = query();
  const status = q.status || '';
  const base = `/p/${encodeURIComponent(project)}`;
  const [run, setRun] = useState(null);
  const [results, setResults] = useState(null);
  const [error, setError] = useState(null);
  const loaded = useRef(PAGE);

  const loadRun = () => api(`executions/${encodeURIComponent(id)}`, { project }).then(setRun, setError);
  // Reloads as many rows as are on screen (a live run's new results appear in place).
  const loadResults = async (more = false) => {
    try {
      let items = more && results ? [...results.items] : [];
      let cursor = more && results ? results.next_cursor : null;
      const want = more ? items.length + PAGE : Math.max(loaded.current, PAGE);
      do {
        const page = await api(`executions/${encodeURIComponent(id)}/results`, { project, status: status || null, limit: PAGE, cursor });
        items = items.concat(page.items);
        cursor = page.next_cursor;
      } while (cursor && items.length < want);
      loaded.current = items.length;
      setResults({ items, next_cursor: cursor });
    } catch (err) { setError(err); }
  };
  useEffect(() => { loadRun(); loadResults(); }, [id, status]);

  const running = run && run.status === 'running';
  const timer = useRef(null);
  const conn = useStream(running ? { project, execution: id } : null, (type, ev) => {
    if (type === 'reset') { loadRun(); loadResults(); return; }
    if (ev.execution_id !== id) return;
    if (type === 'results.recorded' && ev.data.totals) {
      const t = ev.data.totals;
      setRun((r) => r && ({ ...r, counts: { passed: t.passed ?? r.counts.passed, failed: t.failed ?? r.counts.failed, error: t.error ?? r.counts.error, skipped: t.skipped ?? r.counts.skipped },
        total: t.total ?? ['passed', 'failed', 'error', 'skipped'].reduce((s, k) => s + (t[k] || 0), 0) }));
    }
    if (type === 'execution.finished') { loadRun(); loadResults(); return; }
    // Results themselves: refetched at most once a second while batches arrive.
    clearTimeout(timer.current);
    timer.current = setTimeout(() => loadResults(), 1000);
  });
  useEffect(() => () => clearTimeout(timer.current), []);

  if (error && !run) return html`<p><a href=${`${base}/runs`}>← Runs</a></p><${ErrorBox} error=${error} />`;
  if (!run) return html`<${Loading} />`;
  const groups = results ? group(results.items) : [];
  return html`<p><a href=${`${base}/runs`}>← Runs</a></p>
    <header class="run" data-ready="run">
      <h1>${run.name || run.id}</h1>
      <p><span data-k="status"><${Status} status=${run.status} /></span> <${Counts} counts=${run.counts} tests=${run.tests} total=${run.total} />
        ${running ? html` <${Connection} state=${conn} />` : null}</p>
      <dl class="meta">
        <dt>Started</dt><dd>${when(run.started_at)}</dd>
        <dt>Finished</dt><dd>${run.finished_at ? when(run.finished_at) : 'still running'}</dd>
        <dt>Duration</dt><dd>${dur(run.duration_ms)}</dd>
        ${run.environment ? html`<dt>Environment</dt><dd>${run.environment}</dd>` : null}
        ${run.branch ? html`<dt>Branch</dt><dd>${run.branch}</dd>` : null}
        ${run.commit ? html`<dt>Commit</dt><dd><code>${run.commit}</code></dd>` : null}
        ${run.build_url && /^https?:/.test(run.build_url) ? html`<dt>Build</dt><dd><a href=${run.build_url} rel="noopener noreferrer" target="_blank">${run.build_url}</a></dd>` : null}
      </dl>
    </header>
    <${ErrorBox} error=${error} />
    <nav class="tabs" aria-label="filter results by status">${FILTERS.map(([v, label]) => html`
      <a href=${href(location.pathname, { status: v })} aria-current=${status === v ? 'true' : null}>${label}</a>`)}</nav>
    ${!results ? html`<${Loading} />` : groups.length === 0 ? html`<p class="empty">${status ? `No ${status} results.` : running ? 'No results yet; they appear here as the run reports them.' : 'This run has no results.'}</p>` : html`
    <table class="list results" data-rows=${results.items.length}><thead><tr><th>Test</th><th>Outcome</th></tr></thead>
      <tbody>${groups.map((g) => {
        const last = g.attempts[g.attempts.length - 1];
        return html`<tr data-test=${g.test_id}><td><a href=${`${base}/tests/${encodeURIComponent(g.test_id)}`}>${last.name}</a>
          <div class="sub">${last.suite || last.file || ''}${g.attempts.length > 1 ? html` · <strong>${g.attempts.length} attempts</strong>` : ''}</div></td>
          <td>${g.attempts.map((r, i) => html`<${Attempt} r=${r} project=${project} last=${i === g.attempts.length - 1} />`)}</td></tr>`;
      })}</tbody></table>
    ${results.next_cursor ? html`<p><button type="button" onClick=${() => loadResults(true)}>Show ${PAGE} more</button></p>` : null}`}`;
}
