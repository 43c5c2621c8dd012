#!/usr/bin/env node
// End-to-end test of the demo chat in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core).
//
// Targets, from the environment (all optional):
//   ROOMCAST_E2E_BASE_A / ROOMCAST_E2E_BASE_B  base URLs of two nodes (or of nginx in front of them), e.g.
//                                              http://127.0.0.1:8080; the demo is at <base>/demo. B defaults to A.
//   ROOMCAST_E2E_WS_A / ROOMCAST_E2E_WS_B      explicit WebSocket URLs, passed to the page as ?ws=
//   ROOMCAST_E2E_KILL_A                        a shell command that kills the node behind page A: then page A must
//                                              reconnect (through the load balancer) to another node and show what it
//                                              missed. It runs with ROOMCAST_E2E_NODE_A / _B = the pages' node ids
//                                              (from the welcome), to find which node to kill.
//   ROOMCAST_E2E_EXPECT_DIFFERENT_NODES        1: fail unless pages A and B are on different nodes
//   ROOMCAST_E2E_NODE_WS                       node-1=ws://127.0.0.1:P1/ws,node-2=...: the nodes' own /ws URLs; page B
//                                              then connects straight to a node other than page A's (a load balancer
//                                              with ip_hash puts every loopback client on one node)
//   ROOMCAST_E2E_FALLBACK                      1: also test the SSE + HTTP fallback with WebSocket blocked in the page;
//                                              0: skip it; unset: test it when <base>/sse answers
//   ROOMCAST_E2E_ARTIFACTS                     screenshots go here (default test/e2e/artifacts)
//   CHROMIUM                                   browser binary (default /usr/bin/chromium)
//   ROOMCAST_E2E_MOCK                          1: run against test/e2e/mock-node.mjs instead (to try the demo only)
//   ROOMCAST_BIN, ROOMCAST_E2E_WAIT_BIN        without BASE_A: start this binary (default target/release/roomcast,
//                                              then target/debug/roomcast) with --auth none on 127.0.0.1:0, waiting up
//                                              to WAIT_BIN seconds (default 0) for it to exist. If the node has no
//                                              /demo route yet, demo/dist is served by a small static server here
//                                              and the page is pointed at the node's /ws.
// Only loopback addresses are used when this script starts things itself. Every wait is bounded.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pkgRoot = resolve(here, '../..');
const repoRoot = resolve(pkgRoot, '../..');
const env = process.env;
const artifacts = resolve(env.ROOMCAST_E2E_ARTIFACTS ?? join(here, 'artifacts'));
const chromiumPath = env.CHROMIUM ?? '/usr/bin/chromium';
const STEP_TIMEOUT = 15_000;

const results = [];
const cleanups = [];
let failed = 0;
let passed = 0;
let skipped = 0;

function log(...a) {
  console.log('[e2e]', ...a);
}

async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    results.push({ name, ok: true });
    log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (err) {
    failed++;
    results.push({ name, ok: false, err });
    log(`FAIL ${name}: ${err?.stack ?? err}`);
  }
}

function skip(name, why) {
  skipped++;
  log(`skip ${name}: ${why}`);
}

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms)))]).finally(
    () => clearTimeout(t),
  );
}

async function httpStatus(url, ms = 3000) {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), ms);
  try {
    const res = await fetch(url, { signal: ac.signal });
    const status = res.status;
    ac.abort(); // do not wait for a stream's body
    return status;
  } catch {
    return 0;
  } finally {
    clearTimeout(t);
  }
}

async function waitForFile(paths, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (let i = 0; i < 10_000; i++) {
    const found = paths.find((p) => p && existsSync(p));
    if (found || Date.now() >= deadline) return found;
    await new Promise((r) => setTimeout(r, 1000));
  }
  return undefined;
}

/** Start a roomcast node on a free loopback port; resolves with its base URL. */
async function startNode(bin) {
  const child = spawn(bin, ['--auth', 'none', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  cleanups.push(() => child.kill('SIGTERM'));
  const addr = await withTimeout(
    new Promise((resolve, reject) => {
      let buf = '';
      const onData = (d) => {
        buf += d.toString();
        const m = buf.match(/(127\.0\.0\.1|localhost|\[::1\]):(\d{2,5})/);
        if (m && Number(m[2]) > 0) resolve(`127.0.0.1:${m[2]}`);
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.on('exit', (code) => reject(new Error(`roomcast exited with ${code} before it was ready: ${buf.slice(-2000)}`)));
    }),
    20_000,
    'roomcast ready line',
  );
  log(`node ready at ${addr}`);
  return `http://${addr}`;
}

/** Serve demo/dist at /demo on a free loopback port. */
async function startStaticDemo() {
  const dist = join(pkgRoot, 'demo/dist');
  const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };
  const server = http.createServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const file = path === '/demo' || path === '/demo/' ? 'index.html' : path.startsWith('/demo/') ? path.slice(6) : '';
    if (!['index.html', 'app.js', 'style.css'].includes(file)) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(join(dist, file));
      res.writeHead(200, { 'content-type': types[file.slice(file.lastIndexOf('.'))] }).end(body);
    } catch {
      res.writeHead(500).end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => server.close());
  return `http://127.0.0.1:${server.address().port}`;
}

function wsOf(base) {
  return base.replace(/^http/, 'ws').replace(/\/$/, '') + '/ws';
}

function demoUrl(base, name, room, extra = {}) {
  const u = new URL(base.replace(/\/$/, '') + '/demo/'); // the trailing slash: a redirect from /demo may drop the query
  u.searchParams.set('name', name);
  u.searchParams.set('room', room);
  for (const [k, v] of Object.entries(extra)) if (v) u.searchParams.set(k, v);
  return u.toString();
}

async function main() {
  await mkdir(artifacts, { recursive: true });
  let baseA = env.ROOMCAST_E2E_BASE_A;
  let baseB = env.ROOMCAST_E2E_BASE_B;
  let wsA = env.ROOMCAST_E2E_WS_A;
  let wsB = env.ROOMCAST_E2E_WS_B;
  let sameOrigin = true;

  if (!baseA && env.ROOMCAST_E2E_MOCK === '1') {
    // Only to try the demo without the Rust node: test/e2e/mock-node.mjs.
    const { startMockNode } = await import('./mock-node.mjs');
    const mock = await startMockNode(0);
    cleanups.push(() => mock.close());
    baseA = baseB = `http://127.0.0.1:${mock.port}`;
    log(`mock node at ${baseA}`);
  }
  if (!baseA) {
    const bin = await waitForFile(
      [env.ROOMCAST_BIN, join(repoRoot, 'target/release/roomcast'), join(repoRoot, 'target/debug/roomcast')],
      Number(env.ROOMCAST_E2E_WAIT_BIN ?? 0),
    );
    if (!bin) {
      log('no ROOMCAST_E2E_BASE_A and no roomcast binary: nothing to test against');
      console.log('0 passed, 0 failed, 1 skipped');
      return 0;
    }
    const node = await startNode(bin);
    if ((await httpStatus(`${node}/demo`)) === 200) {
      baseA = baseB = node;
    } else {
      log('the node has no /demo yet: serving demo/dist from here');
      baseA = baseB = await startStaticDemo();
      wsA = wsB = wsOf(node);
      sameOrigin = false;
    }
  }
  baseB ??= baseA;
  if (sameOrigin && (await httpStatus(`${baseA.replace(/\/$/, '')}/demo`)) === 404) {
    // The nodes do not serve /demo (yet): serve demo/dist here and point the pages at the nodes.
    log(`${baseA}/demo is 404: serving demo/dist from here`);
    wsA ??= wsOf(baseA);
    wsB ??= wsOf(baseB);
    baseA = baseB = await startStaticDemo();
    sameOrigin = false;
  }
  if (!wsA && !sameOrigin) wsA = wsOf(baseA);
  wsB ??= wsA && baseB === baseA ? wsA : undefined;

  if (!existsSync(chromiumPath)) throw new Error(`no browser at ${chromiumPath}: apt-get install -y chromium`);
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: 30_000,
  });
  cleanups.unshift(() => browser.close());
  const room = `e2e-${Date.now().toString(36)}`;
  const ctxA = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const ctxB = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const a = await ctxA.newPage();
  const b = await ctxB.newPage();
  for (const [n, p] of [['A', a], ['B', b]]) {
    p.on('console', (m) => m.type() === 'error' && log(`page ${n} console: ${m.text()}`));
    p.on('pageerror', (e) => log(`page ${n} error: ${e.message}`));
  }
  const connected = (p) => p.waitForSelector('#state[data-state="connected"]', { timeout: STEP_TIMEOUT });
  // Background pages may not run requestAnimationFrame: poll on a timer.
  const say = async (p, text) => {
    await p.fill('#text', text);
    await p.press('#text', 'Enter');
  };
  const sees = (p, text) =>
    p.waitForFunction(
      (t) => [...document.querySelectorAll('#messages li.chat .text')].some((e) => e.textContent === t),
      text,
      { timeout: STEP_TIMEOUT, polling: 100 },
    );

  const nodeOf = (p) => p.evaluate(() => window.roomcast?.welcome?.node ?? '').catch(() => '');
  await step('before joining only the join form shows; the chat pane after', async () => {
    // The pane is <main id="chat" hidden>: a `main { display: grid }` rule once showed it (and a
    // Send box whose text went nowhere) before the user had joined.
    const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    const p = await ctx.newPage();
    const u = new URL(baseA.replace(/\/$/, '') + '/demo/');
    if (wsA) u.searchParams.set('ws', wsA);
    await p.goto(u.toString(), { timeout: STEP_TIMEOUT });
    await p.waitForSelector('#join', { state: 'visible', timeout: STEP_TIMEOUT });
    for (const sel of ['#chat', '#compose', '#text', '#messages']) {
      if (await p.isVisible(sel)) throw new Error(`${sel} is visible before joining`);
    }
    await p.fill('#name', 'erin');
    await p.fill('#room', `${room}-join`);
    await p.click('#join button[type="submit"]');
    await p.waitForSelector('#chat', { state: 'visible', timeout: STEP_TIMEOUT });
    await p.waitForSelector('#text', { state: 'visible', timeout: STEP_TIMEOUT });
    await connected(p);
    await ctx.close();
  });

  await step('both pages load the demo and connect', async () => {
    await a.goto(demoUrl(baseA, 'alice', room, { ws: wsA }), { timeout: STEP_TIMEOUT });
    await connected(a);
    if (env.ROOMCAST_E2E_NODE_WS) {
      // node-1=ws://...,node-2=ws://...: put page B on a node other than page A's.
      const a0 = await nodeOf(a);
      const other = env.ROOMCAST_E2E_NODE_WS.split(',')
        .map((x) => x.split('='))
        .find(([id, u]) => id && u && id !== a0);
      if (other) wsB = other[1];
    }
    await b.goto(demoUrl(baseB, 'bob', room, { ws: wsB }), { timeout: STEP_TIMEOUT });
    await connected(b);
  });

  const nodeA = await nodeOf(a);
  const nodeB = await nodeOf(b);
  log(`page A is on node ${nodeA || '?'}, page B on node ${nodeB || '?'}`);
  if (env.ROOMCAST_E2E_EXPECT_DIFFERENT_NODES === '1') {
    await step('the two pages are on different nodes', async () => {
      if (!nodeA || nodeA === nodeB) throw new Error(`both pages on node ${nodeA}`);
    });
  }

  await step('alice and bob chat in one room', async () => {
    await b.waitForFunction(() => document.querySelector('#messages')?.textContent?.includes('joined'), null, { timeout: STEP_TIMEOUT, polling: 100 });
    await say(a, 'hello from alice');
    await sees(b, 'hello from alice');
    await say(b, 'hi alice, bob here');
    await sees(a, 'hi alice, bob here');
  });

  await step('presence lists both users', async () => {
    for (const p of [a, b]) {
      await p.waitForFunction(() => document.querySelectorAll('#members li').length >= 2, null, { timeout: STEP_TIMEOUT, polling: 100 });
    }
  });

  await step('typing indicator reaches the other page', async () => {
    await a.type('#text', 'typing…', { delay: 20 });
    await b.waitForFunction(() => document.querySelector('#typing')?.textContent?.includes('alice'), null, { timeout: STEP_TIMEOUT, polling: 100 });
    await a.fill('#text', '');
  });

  await step('history on join: a third page sees earlier messages', async () => {
    const c = await (await browser.newContext()).newPage();
    await c.goto(demoUrl(baseA, 'carol', room, { ws: wsA }), { timeout: STEP_TIMEOUT });
    await connected(c);
    await sees(c, 'hello from alice');
    await c.screenshot({ path: join(artifacts, 'demo-history.png') });
    await c.context().close();
  });

  await step('a user who connected without a name shows as guest-<4 chars>, not a hex id', async () => {
    const { default: WebSocket } = await import('ws');
    const sock = new WebSocket(wsA ?? wsOf(baseA));
    try {
      const welcome = await withTimeout(
        new Promise((res, rej) => {
          sock.once('message', (d) => res(JSON.parse(String(d))));
          sock.once('error', rej);
        }),
        STEP_TIMEOUT,
        'welcome',
      );
      if (welcome.type !== 'welcome' || typeof welcome.user !== 'string') throw new Error(`no welcome: ${JSON.stringify(welcome)}`);
      sock.send(JSON.stringify({ type: 'join', room, id: 'guest-join' }));
      const label = `guest-${welcome.user.slice(0, 4)}`;
      await a.waitForFunction(
        (l) => [...document.querySelectorAll('#members li')].some((e) => e.textContent === l),
        label,
        { timeout: STEP_TIMEOUT, polling: 100 },
      );
      const shown = await a.evaluate(() => [...document.querySelectorAll('#members li')].map((e) => e.textContent));
      log(`members on page A: ${shown.join(', ')}`);
    } finally {
      sock.close();
    }
  });

  await a.screenshot({ path: join(artifacts, 'demo-alice.png') });
  await b.screenshot({ path: join(artifacts, 'demo-bob.png') });

  if (env.ROOMCAST_E2E_KILL_A) {
    await step('page A reconnects after its node is killed and shows what it missed', async () => {
      // Record page A's connection states in the page: the reconnect may be quicker than any polling.
      await a.evaluate(() => {
        window.__states = [];
        window.roomcast.on('state', (s) => window.__states.push(s));
      });
      await withTimeout(
        new Promise((res, rej) => {
          const k = spawn('sh', ['-c', env.ROOMCAST_E2E_KILL_A], {
            stdio: 'inherit',
            env: { ...process.env, ROOMCAST_E2E_NODE_A: nodeA, ROOMCAST_E2E_NODE_B: nodeB },
          });
          k.on('exit', (code) => (code === 0 ? res() : rej(new Error(`kill command exited with ${code}`))));
        }),
        30_000,
        'kill command',
      );
      await a.waitForFunction(() => window.__states.length > 0, null, { timeout: STEP_TIMEOUT, polling: 100 });
      await say(b, 'sent while alice was away');
      await a.waitForFunction(() => window.roomcast.state === 'connected', null, { timeout: STEP_TIMEOUT, polling: 100 });
      log(`page A went through: ${(await a.evaluate(() => window.__states)).join(' -> ')}`);
      await sees(a, 'sent while alice was away');
      const now = await nodeOf(a);
      log(`page A reconnected to node ${now || '?'}`);
      if (nodeA && now === nodeA) throw new Error(`page A came back to the killed node ${nodeA}`);
      await a.screenshot({ path: join(artifacts, 'demo-alice-after-failover.png') });
    });
  } else {
    skip('failover', 'ROOMCAST_E2E_KILL_A not set');
  }

  const fb = env.ROOMCAST_E2E_FALLBACK;
  const sseThere = fb === '1' || (fb !== '0' && sameOrigin && (await httpStatus(`${baseA.replace(/\/$/, '')}/sse?rooms=${room}`)) === 200);
  if (sseThere && sameOrigin) {
    await step('fallback: with WebSocket blocked, the page chats over SSE + HTTP', async () => {
      const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
      const d = await ctx.newPage();
      if (typeof d.routeWebSocket === 'function') {
        await d.routeWebSocket(/\/ws/, (ws) => ws.close({ code: 1006 }).catch(() => ws.close()));
      }
      const extra = typeof d.routeWebSocket === 'function' ? {} : { transport: 'http' };
      await d.goto(demoUrl(baseA, 'dave', room, { ws: wsA, ...extra }), { timeout: STEP_TIMEOUT });
      await d.waitForFunction(() => document.querySelector('#transport')?.textContent === 'SSE + HTTP', null, { timeout: 30_000, polling: 100 });
      await connected(d);
      await say(d, 'dave over http');
      await sees(a, 'dave over http');
      await say(a, 'alice to dave');
      await sees(d, 'alice to dave');
      await d.screenshot({ path: join(artifacts, 'demo-fallback.png') });
      await ctx.close();
    });
  } else {
    skip('fallback', sameOrigin ? '/sse not available' : 'demo served cross-origin');
  }
  return failed === 0 ? 0 : 1;
}

let code = 1;
try {
  code = await withTimeout(main(), 10 * 60_000, 'e2e run');
} catch (err) {
  failed++;
  log(`error: ${err?.stack ?? err}`);
} finally {
  for (const c of cleanups) {
    try {
      await withTimeout(Promise.resolve(c()), 10_000, 'cleanup');
    } catch {
      /* best effort */
    }
  }
}
log(`screenshots in ${artifacts}`);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed ? 1 : code);
