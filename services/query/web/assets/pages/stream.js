// /v1/stream in the browser: EventSource (the cookie authenticates it; it resumes by itself with
// Last-Event-ID) and the connection state a user can see.
import { useEffect, useRef, useState } from '../vendor/hooks.mjs';
import { html } from '../api.js';

const TYPES = ['execution.started', 'results.recorded', 'execution.finished'];

// opts: {project, execution?} or null (no stream). onEvent(type, envelope) for each event, and
// ('reset', data) when the server could not replay a gap: the page refetches then.
export function useStream(opts, onEvent) {
  const [state, setState] = useState('connecting');
  const handler = useRef(onEvent);
  handler.current = onEvent;
  const key = opts ? JSON.stringify(opts) : null;
  useEffect(() => {
    if (!opts) return undefined;
    const q = new URLSearchParams({ project: opts.project });
    if (opts.execution) q.set('execution', opts.execution);
    const es = new EventSource(`/v1/stream?${q}`);
    es.onopen = () => setState('live');
    es.onerror = () => setState(es.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
    for (const t of TYPES) es.addEventListener(t, (e) => { try { handler.current(t, JSON.parse(e.data)); } catch (err) { console.error(err); } });
    es.addEventListener('reset', (e) => handler.current('reset', JSON.parse(e.data || '{}')));
    es.addEventListener('end', () => setState('reconnecting'));
    return () => es.close();
  }, [key]);
  return opts ? state : 'off';
}

const LABEL = { connecting: 'connecting…', live: 'live', reconnecting: 'connection lost, reconnecting…', closed: 'disconnected (reload to retry)', off: 'not live' };
export function Connection({ state }) {
  return html`<span class="conn conn-${state}" role="status" data-k="connection"><span aria-hidden="true">${state === 'live' ? '◉' : '○'}</span> ${LABEL[state]}</span>`;
}
