// Runs: executions newest first, keyset pages. "Older" follows the API's next_cursor; "newer" goes
// back through the cursors this tab has followed (kept per filter set), never an offset.
import { html, query, href, navigate, useApi, filterParams, num, dur, when, ErrorBox, Loading, Status } from '../api.js';
import { Filters } from './filters.js';
import { EmptyProject } from './empty.js';

const STATUSES = ['', 'running', 'passed', 'failed', 'error', 'cancelled'];
const trail = new Map(); // filters -> cursors followed, in order

export function RunRow({ e, base }) {
  const c = e.counts;
  return html`<tr data-id=${e.id}>
    <td><${Status} status=${e.status} /></td>
    <td><a href=${`${base}/runs/${e.id}`}>${e.name || e.id.slice(0, 8)}</a>
      <div class="sub">${e.environment || ''}${e.branch ? ` · ${e.branch}` : ''}${e.commit ? ` · ${e.commit.slice(0, 10)}` : ''}</div></td>
    <td class="counts"><${Counts} counts=${c} tests=${e.tests} total=${e.total} /></td>
    <td class="n">${dur(e.duration_ms)}</td>
    <td>${when(e.started_at)}</td>
    <td>${e.build_url && /^https?:/.test(e.build_url) ? html`<a href=${e.build_url} rel="noopener noreferrer" target="_blank">build</a>` : ''}</td>
  </tr>`;
}

export function Counts({ counts, tests, total }) {
  return html`<span class="c"><span title="passed"><span aria-hidden="true">✓</span> <span data-c="passed">${num(counts.passed)}</span><span class="sr"> passed</span></span>
    <span title="failed"><span aria-hidden="true">✗</span> <span data-c="failed">${num(counts.failed)}</span><span class="sr"> failed</span></span>
    <span title="error"><span aria-hidden="true">!</span> <span data-c="error">${num(counts.error)}</span><span class="sr"> error</span></span>
    <span title="skipped"><span aria-hidden="true">–</span> <span data-c="skipped">${num(counts.skipped)}</span><span class="sr"> skipped</span></span>
    <span class="sub" title="attempts"> / <span data-c="total">${num(total)}</span> attempts</span>
    ${tests ? html`<span class="sub" title="distinct tests by their final attempt" data-c="tests"> · ${num(tests.total)} tests${
      (tests.failed || tests.error) ? `, ${num((tests.failed || 0) + (tests.error || 0))} failing` : ''}${tests.flaky ? `, ${num(tests.flaky)} flaky` : ''}</span>` : null}</span>`;
}

export function Runs({ project }) {
  const q = query();
  const params = { project, ...filterParams(q), status: q.status || null, from: q.from || null, to: q.to || null, limit: q.limit || 25, cursor: q.cursor || null };
  const { data, error, loading } = useApi('executions', params, JSON.stringify(params));
  const base = `/p/${encodeURIComponent(project)}`;
  const key = JSON.stringify({ ...params, cursor: null });
  const stack = trail.get(key) || [];
  const go = (cursor) => navigate(href(location.pathname, { ...q, cursor }));
  const older = () => { trail.set(key, [...stack, q.cursor || '']); go(data.next_cursor); };
  const newer = () => { const s = [...stack]; const prev = s.pop(); trail.set(key, s); go(prev || null); };
  const statusSelect = html`<label>Status <select name="status" value=${q.status || ''}
      onChange=${(e) => navigate(href(location.pathname, { ...q, status: e.target.value, cursor: null }))}>
      ${STATUSES.map((s) => html`<option value=${s}>${s || 'any'}</option>`)}</select></label>`;
  return html`<h1>Runs</h1>
    <${Filters} ranged=${false} extra=${statusSelect} />
    ${q.from || q.to ? html`<p class="range">Started from ${when(q.from)} to ${when(q.to)} ·
      <a href=${href(location.pathname, { ...q, from: null, to: null, cursor: null })}>all dates</a></p>` : null}
    <${ErrorBox} error=${error} />
    ${loading && !data ? html`<${Loading} />` : null}
    ${data ? (data.items.length === 0 && !q.cursor ? html`<${EmptyProject} project=${project} filtered=${!!(q.environment || q.branch || q.status || q.from)} />` : html`
    <table class="list runs" data-ready="runs"><thead><tr><th>Status</th><th>Run</th><th>Counts</th><th class="n">Duration</th><th>Started</th><th>Build</th></tr></thead>
      <tbody>${data.items.map((e) => html`<${RunRow} e=${e} base=${base} />`)}</tbody></table>
    <nav class="pager" aria-label="pages">
      <button type="button" data-k="newer" disabled=${!q.cursor} onClick=${newer}>← Newer</button>
      <button type="button" data-k="older" disabled=${!data.next_cursor} onClick=${older}>Older →</button>
    </nav>`) : null}`;
}
