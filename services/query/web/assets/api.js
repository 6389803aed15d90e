// The public API, as a browser sees it: same-origin fetch with the HttpOnly cookie, JSON errors
// turned into readable messages, and the formatting every page shares.
import { h } from './vendor/preact.mjs';
import htm from './vendor/htm.mjs';

export const html = htm.bind(h);

export class ApiError extends Error {
  constructor(status, body, url) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || String(status);
    this.field = e.field;
    this.url = url;
  }
}

// GET /v1/<path>?<params>; params with null/undefined/'' values are left out.
export async function api(path, params = {}) {
  const url = apiUrl(path, params);
  let resp;
  try {
    resp = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  } catch (err) {
    throw new ApiError(0, { error: { message: `the server did not answer (${err.message}); is ATAS running?` } }, url);
  }
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, body, url);
  return body;
}

export function apiUrl(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, v);
  const s = q.toString();
  return `/v1/${path}${s ? '?' + s : ''}`;
}

// ---- URL state: every filter lives in the query string, so a link reproduces the view.
export function query() { return Object.fromEntries(new URLSearchParams(location.search)); }

export function href(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, v);
  const s = q.toString();
  return path + (s ? '?' + s : '');
}

export function navigate(url, replace = false) {
  history[replace ? 'replaceState' : 'pushState'](null, '', url);
  dispatchEvent(new Event('atas:navigate'));
}

export const PRESETS = { '24h': 24 * 3600e3, '7d': 7 * 24 * 3600e3, '30d': 30 * 24 * 3600e3 };

// The range of a view: a preset counts back from the current minute (so views opened in the same
// minute share the API's cache entry); `custom` takes from/to as given.
export function rangeParams(q) {
  if (q.range === 'custom') return { from: q.from || null, to: q.to || null };
  const span = PRESETS[q.range || '7d'] || PRESETS['7d'];
  const minute = Math.floor(Date.now() / 60000) * 60000;
  return { from: new Date(minute - span).toISOString(), to: null };
}

export function filterParams(q) { return { environment: q.environment || null, branch: q.branch || null }; }

// ---- formatting
export const pct = (x) => (x === null || x === undefined ? '—' : `${(x * 100).toFixed(1)} %`);
export const num = (x) => (x === null || x === undefined ? '—' : Number(x).toLocaleString('en-US'));

export function dur(ms) {
  if (ms === null || ms === undefined) return '—';
  ms = Math.round(ms);
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toLocaleString('en-GB', { year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit' });
}

export function ago(iso) {
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

// Status is always a symbol and a word; the colour only repeats it.
const SYMBOL = { passed: '✓', failed: '✗', error: '!', skipped: '–', running: '●', cancelled: '■', flaky: '≈' };
export function Status({ status }) {
  return html`<span class="status s-${status}"><span aria-hidden="true">${SYMBOL[status] || '?'}</span> ${status}</span>`;
}

export function ErrorBox({ error }) {
  if (!error) return null;
  const signIn = error.status === 401;
  return html`<div class="error" role="alert">
    <strong>${signIn ? 'Not signed in' : error.status === 403 ? 'Not allowed' : 'Something went wrong'}</strong>
    <p>${error.message}</p>
    ${signIn ? html`<p><a href="/signin">Sign in</a></p>` : null}
  </div>`;
}

export const Loading = () => html`<p class="loading" aria-busy="true">Loading…</p>`;

import { useEffect, useState, useCallback } from './vendor/hooks.mjs';

// Load an API answer; `key` (a string) decides when to load again.
export function useApi(path, params, key) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const load = useCallback(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    api(path, params).then((data) => live && setState({ data, error: null, loading: false }),
      (error) => live && setState({ data: null, error, loading: false }));
    return () => { live = false; };
  }, [key]);
  useEffect(load, [load]);
  return { ...state, reload: load };
}
