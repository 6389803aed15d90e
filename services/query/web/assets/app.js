// The dashboard shell: routes (/p/<project>/<page>), header, theme, and the sign-in page.
import { render } from './vendor/preact.mjs';
import { useEffect, useState } from './vendor/hooks.mjs';
import { html, href, navigate, ErrorBox } from './api.js';
import { Overview } from './pages/overview.js';
import { Trends } from './pages/trends.js';
import { Runs } from './pages/runs.js';
import { Run } from './pages/run.js';
import { Tests, History } from './pages/tests.js';
import { Live } from './pages/live.js';

const PAGES = [
  ['', 'Overview'], ['trends', 'Trends'], ['runs', 'Runs'], ['tests', 'Tests'], ['live', 'Live'],
];

function route(pathname) {
  const parts = pathname.split('/').filter(Boolean);
  if (parts[0] !== 'p' || !parts[1]) return { page: parts[0] === 'signin' ? 'signin' : 'home' };
  const project = decodeURIComponent(parts[1]);
  const [page = '', ...rest] = parts.slice(2);
  return { project, page, arg: rest.length ? decodeURIComponent(rest.join('/')) : null };
}

function Header({ r }) {
  const base = `/p/${encodeURIComponent(r.project)}`;
  return html`<header class="top">
    <a class="skip" href="#main">Skip to content</a>
    <a class="brand" href=${base}>ATAS</a>
    <span class="project" title="project">${r.project}</span>
    <nav aria-label="pages">${PAGES.map(([p, label]) => html`
      <a href=${p ? `${base}/${p}` : base} aria-current=${r.page === p ? 'page' : null}>${label}</a>`)}
    </nav>
    <form method="post" action="/signout" class="signout"><button type="submit">Sign out</button></form>
  </header>`;
}

function SignIn() {
  const error = new URLSearchParams(location.search).get('error');
  return html`<main class="signin">
    <h1>Sign in to ATAS</h1>
    ${error ? html`<div class="error" role="alert"><p>${error}</p></div>` : null}
    <form method="post" action="/signin">
      <label for="token">Access token (scope <code>query:read</code>, and <code>stream:read</code> for live pages)</label>
      <textarea id="token" name="token" rows="4" required autocomplete="off" spellcheck="false"></textarea>
      <button type="submit">Sign in</button>
    </form>
    <p class="hint">Mint one with <code>atas token -s query:read -s stream:read -p PROJECT --ttl 86400</code>.
      Running <code>atas dev</code>? Open the one-time link it prints. The token is kept in an HttpOnly cookie.</p>
  </main>`;
}

// `/`: the projects of the cookie's token; one project goes straight to its overview.
function Home() {
  const [state, setState] = useState(null);
  useEffect(() => {
    fetch('/session', { credentials: 'same-origin' }).then(async (resp) => {
      if (resp.status === 401) return navigate('/signin', true);
      const s = await resp.json();
      const named = s.projects.filter((p) => p !== '*');
      if (named.length === 1 && !s.projects.includes('*')) return navigate(`/p/${encodeURIComponent(named[0])}`, true);
      setState(s);
    }, (error) => setState({ error }));
  }, []);
  if (!state) return null;
  if (state.error) return html`<${ErrorBox} error=${state.error} />`;
  return html`<main class="home"><h1>Projects</h1>
    ${state.projects.filter((p) => p !== '*').map((p) => html`<p><a href=${`/p/${encodeURIComponent(p)}`}>${p}</a></p>`)}
    <form class="goto" onSubmit=${(e) => { e.preventDefault(); navigate(`/p/${encodeURIComponent(e.target.project.value)}`); }}>
      <label for="project">Open a project</label> <input id="project" name="project" required placeholder="demo" />
      <button type="submit">Open</button>
    </form></main>`;
}

function App() {
  const [loc, setLoc] = useState(location.pathname + location.search);
  useEffect(() => {
    const on = () => setLoc(location.pathname + location.search);
    addEventListener('popstate', on);
    addEventListener('atas:navigate', on);
    return () => { removeEventListener('popstate', on); removeEventListener('atas:navigate', on); };
  }, []);
  const r = route(location.pathname);
  if (r.page === 'signin') return html`<${SignIn} />`;
  if (r.page === 'home') return html`<${Home} />`;
  const Page = { '': Overview, trends: Trends, runs: r.arg ? Run : Runs, tests: r.arg ? History : Tests, live: Live }[r.page];
  return html`<${Header} r=${r} />
    <main id="main" tabindex="-1">${Page ? html`<${Page} key=${loc} project=${r.project} arg=${r.arg} />`
      : html`<p>No page here. <a href=${href(`/p/${encodeURIComponent(r.project)}`)}>Overview</a></p>`}</main>`;
}

// Same-origin links navigate in place (keyboard and middle-click keep working: only plain clicks).
document.addEventListener('click', (e) => {
  const a = e.target.closest && e.target.closest('a[href]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || a.target || a.hasAttribute('download') || !url.pathname.startsWith('/p/')) return;
  if (url.hash && url.pathname === location.pathname) return; // in-page anchors (skip link)
  e.preventDefault();
  navigate(url.pathname + url.search);
  scrollTo(0, 0);
});

render(html`<${App} />`, document.getElementById('app'));
