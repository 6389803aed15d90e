// Tests: failing, flaky and slowest lists; a test's history (every attempt, newest first).
import { useState } from '../vendor/hooks.mjs';
import { html, api, query, href, navigate, useApi, rangeParams, filterParams, pct, num, dur, when, ErrorBox, Loading, Status } from '../api.js';
import { Filters } from './filters.js';

const TABS = [['failing', 'Failing'], ['flaky', 'Flaky'], ['slowest', 'Slowest']];
const COLUMNS = {
  failing: [['Failures', (t) => num(t.failures)], ['Runs', (t) => num(t.runs)], ['Failure rate', (t) => pct(t.failure_rate)], ['Last failed', (t) => when(t.last_failed_at)]],
  flaky: [['Runs', (t) => num(t.runs)], ['Retry passes', (t) => num(t.retry_passes)], ['Flaky commits', (t) => num(t.flaky_commits)]],
  slowest: [['Runs', (t) => num(t.runs)], ['Mean', (t) => dur(t.mean_ms)], ['Max', (t) => dur(t.max_ms)]],
};

export function Tests({ project }) {
  const q = query();
  const tab = COLUMNS[q.tab] ? q.tab : 'failing';
  const params = { project, ...rangeParams(q), ...filterParams(q), limit: 50 };
  const { data, error, loading } = useApi(`tests/${tab}`, params, tab + JSON.stringify(params));
  const base = `/p/${encodeURIComponent(project)}`;
  return html`<h1>Tests</h1>
    <nav class="tabs" aria-label="lists">${TABS.map(([k, label]) => html`
      <a href=${href(location.pathname, { ...q, tab: k === 'failing' ? null : k })} aria-current=${tab === k ? 'true' : null}>${label}</a>`)}</nav>
    <${Filters} />
    <${ErrorBox} error=${error} />
    ${loading && !data ? html`<${Loading} />` : null}
    ${data ? (data.items.length === 0 ? html`<p class="empty">${{ failing: 'No test failed in this range.', flaky: 'No flaky test in this range: no retry passed, and no commit both passed and failed a test.', slowest: 'No test ran in this range.' }[tab]}</p>` : html`
    <table class="list" data-ready="tests"><thead><tr><th>Test</th>${COLUMNS[tab].map(([c]) => html`<th class="n">${c}</th>`)}</tr></thead>
      <tbody>${data.items.map((t) => html`<tr><td><a href=${`${base}/tests/${encodeURIComponent(t.test_id)}`}>${t.name}</a>${t.suite ? html`<div class="sub">${t.suite}</div>` : null}</td>
        ${COLUMNS[tab].map(([, f]) => html`<td class="n">${f(t)}</td>`)}</tr>`)}</tbody></table>`) : null}`;
}

export function History({ project, arg: testId }) {
  const [pages, setPages] = useState([]);
  const q = query();
  const params = { project, ...filterParams(q), ...(q.range ? rangeParams(q) : {}) };
  const { data, error, loading } = useApi(`tests/${encodeURIComponent(testId)}/history`, params, testId + JSON.stringify(params));
  const [moreError, setMoreError] = useState(null);
  const base = `/p/${encodeURIComponent(project)}`;
  const items = data ? data.items.concat(...pages.map((p) => p.items)) : [];
  const next = pages.length ? pages[pages.length - 1].next_cursor : data && data.next_cursor;
  const more = () => api(`tests/${encodeURIComponent(testId)}/history`, { ...params, cursor: next }).then((p) => setPages([...pages, p]), setMoreError);
  return html`<p><a href=${`${base}/tests`}>← Tests</a></p><h1 class="testid">${testId}</h1>
    <${ErrorBox} error=${error || moreError} />
    ${loading && !data ? html`<${Loading} />` : null}
    ${data ? (items.length === 0 ? html`<p class="empty">This test has no attempts in the last days. Pick a wider range on <a href=${`${base}/tests`}>Tests</a>.</p>` : html`
    <table class="list" data-ready="history"><thead><tr><th>Outcome</th><th>Run</th><th class="n">Duration</th><th>Error</th></tr></thead>
      <tbody>${items.map((it) => html`<tr><td><${Status} status=${it.status} />${it.attempt > 1 ? html`<div class="sub">attempt ${it.attempt}</div>` : null}</td>
        <td><a href=${`${base}/runs/${it.execution_id}`}>${it.execution_name || it.execution_id.slice(0, 8)}</a>
          <div class="sub">${when(it.execution_started_at)}${it.environment ? ` · ${it.environment}` : ''}${it.branch ? ` · ${it.branch}` : ''}${it.commit ? ` · ${it.commit.slice(0, 10)}` : ''}</div></td>
        <td class="n">${dur(it.duration_ms)}</td>
        <td>${it.error_message || it.error_type ? html`<details><summary>${it.error_type ? html`<code>${it.error_type}</code> ` : null}${(it.error_message || '').split('\n')[0].slice(0, 160)}</summary><pre class="msg">${it.error_message}</pre></details>` : ''}</td></tr>`)}</tbody></table>
    ${next ? html`<p><button type="button" onClick=${more}>Older attempts</button></p>` : null}`) : null}`;
}
