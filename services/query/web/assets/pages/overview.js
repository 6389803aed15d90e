// Project overview: pass rate, executions by status, duration mean/p95, top failing tests.
import { html, query, href, useApi, rangeParams, filterParams, pct, num, dur, when, ErrorBox, Loading, Status } from '../api.js';
import { Filters } from './filters.js';
import { EmptyProject } from './empty.js';

export function Overview({ project }) {
  const q = query();
  const params = { project, ...rangeParams(q), ...filterParams(q), limit: 10 };
  const { data, error, loading } = useApi('dashboard/overview', params, JSON.stringify(params));
  const base = `/p/${encodeURIComponent(project)}`;
  return html`<h1>Overview</h1>
    <${Filters} />
    <${ErrorBox} error=${error} />
    ${loading && !data ? html`<${Loading} />` : null}
    ${data ? (data.executions === 0 ? html`<${EmptyProject} project=${project} filtered=${!!(q.environment || q.branch)} />` : html`
    <section class="cards" data-ready="overview" data-from=${data.range.from} data-to=${data.range.to}>
      <div class="card"><h2>Pass rate</h2><p class="big" data-k="pass_rate">${pct(data.pass_rate)}</p>
        <p class="sub">${num(data.results_by_status.passed)} passed of ${num(data.results)} results</p></div>
      <div class="card"><h2>Executions</h2><p class="big" data-k="executions">${num(data.executions)}</p>
        <ul class="bystatus">${Object.entries(data.executions_by_status).map(([s, n]) => html`
          <li><a href=${href(`${base}/runs`, { ...filterParams(q), status: s, from: data.range.from, to: data.range.to })} title=${`${s} runs in this range`}><${Status} status=${s} /></a>
            <span data-k=${'executions_' + s}>${num(n)}</span></li>`)}</ul></div>
      <div class="card"><h2>Duration</h2><p class="big"><span class="sr">mean </span><span data-k="duration_mean">${dur(data.duration.mean_ms)}</span></p>
        <p class="sub">mean · p95 <span data-k="duration_p95">${dur(data.duration.p95_ms)}</span></p></div>
      <div class="card"><h2>Results</h2><ul class="bystatus">${Object.entries(data.results_by_status).map(([s, n]) => html`
          <li><${Status} status=${s} /> <span data-k=${'results_' + s}>${num(n)}</span></li>`)}</ul></div>
    </section>
    <p class="range">From ${when(data.range.from)} to ${when(data.range.to)}</p>
    <section><h2>Top failing tests</h2>
      ${data.top_failing_tests.length === 0 ? html`<p class="empty">No failures in this range. 🎉</p>` : html`
      <table class="list" data-k="top_failing"><thead><tr><th>Test</th><th class="n">Failures</th><th class="n">Runs</th><th class="n">Failure rate</th><th>Last failed</th></tr></thead>
      <tbody>${data.top_failing_tests.map((t) => html`<tr>
        <td><a href=${`${base}/tests/${encodeURIComponent(t.test_id)}`}>${t.name}</a>${t.suite ? html`<div class="sub">${t.suite}</div>` : null}</td>
        <td class="n">${num(t.failures)}</td><td class="n">${num(t.runs)}</td><td class="n">${pct(t.failure_rate)}</td><td>${when(t.last_failed_at)}</td></tr>`)}
      </tbody></table>`}
    </section>`) : null}`;
}
