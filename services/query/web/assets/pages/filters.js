// The filter bar: date range presets (24 h, 7 d, 30 d, custom) and environment/branch, kept in the URL.
import { html, query, href, navigate } from '../api.js';

const PRESET_LABELS = [['24h', '24 h'], ['7d', '7 days'], ['30d', '30 days'], ['custom', 'Custom']];

export function Filters({ extra = null, ranged = true }) {
  const q = query();
  const range = q.range || '7d';
  const set = (changes) => navigate(href(location.pathname, { ...q, ...changes, cursor: null }));
  const submit = (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const changes = { environment: f.get('environment').trim(), branch: f.get('branch').trim() };
    if (range === 'custom') {
      changes.from = f.get('from') ? new Date(f.get('from')).toISOString() : null;
      changes.to = f.get('to') ? new Date(f.get('to')).toISOString() : null;
    }
    set(changes);
  };
  const local = (iso) => (iso ? new Date(new Date(iso).getTime() - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16) : '');
  return html`<form class="filters" onSubmit=${submit} aria-label="filters">
    ${ranged ? html`<fieldset class="presets"><legend class="sr">Date range</legend>
      ${PRESET_LABELS.map(([k, label]) => html`<button type="button" aria-pressed=${range === k}
        onClick=${() => set({ range: k === '7d' ? null : k })}>${label}</button>`)}</fieldset>` : null}
    ${ranged && range === 'custom' ? html`<label>From <input type="datetime-local" name="from" value=${local(q.from)} /></label>
      <label>To <input type="datetime-local" name="to" value=${local(q.to)} /></label>` : null}
    <label>Environment <input name="environment" value=${q.environment || ''} placeholder="any" size="10" /></label>
    <label>Branch <input name="branch" value=${q.branch || ''} placeholder="any" size="12" /></label>
    ${extra}
    <button type="submit">Apply</button>
  </form>`;
}
