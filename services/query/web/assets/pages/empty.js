// What to do when there is nothing to show.
import { html } from '../api.js';

export function EmptyProject({ project, filtered }) {
  if (filtered) return html`<div class="empty"><p>No runs match these filters in this range.</p>
    <p>Widen the date range, or clear the environment and branch fields.</p></div>`;
  return html`<div class="empty"><h2>No runs yet in project <code>${project}</code></h2>
    <p>Send some: <code>atas import junit report.xml --project ${project}</code>, or post to
      <code>POST /v1/executions</code> from your test harness (see <a href="/openapi.json">the API</a>).</p>
    <p>Trying things out? <code>atas dev --demo</code> fills a project with realistic data.</p></div>`;
}
