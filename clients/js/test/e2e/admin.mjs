#!/usr/bin/env node
// End-to-end test of the admin page (/admin, --admin-key) in headless Chromium (Debian's /usr/bin/chromium driven
// by playwright-core): a redis-server and two roomcast nodes of its own on loopback, the page opened on node 1, a
// wrong key refused, the right key shows both nodes; a screenshot of the node list is taken into the test's temp
// directory and checked (written, a non-empty PNG).
//
// Environment (all optional):
//   ROOMCAST_BIN               node binary (default target/release/roomcast, then target/debug/roomcast)
//   REDIS_BIN                  redis-server (default: redis-server from PATH)
//   CHROMIUM                   browser binary (default /usr/bin/chromium)
//   ROOMCAST_E2E_ARTIFACTS     a copy of the screenshot goes here too
// Only loopback addresses are used; every wait is bounded; everything started here is stopped by its handle.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '../../../..');
const env = process.env;
const chromiumPath = env.CHROMIUM ?? '/usr/bin/chromium';
const KEY = `admin-e2e-${Math.random().toString(36).slice(2)}-${Date.now().toString(36)}`;
const NODES = ['admin-e2e-1', 'admin-e2e-2'];
const STEP_TIMEOUT = 15_000;
const cleanups = [];

function log(...a) {
  console.log('[admin-e2e]', ...a);
}

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms)))]).finally(
    () => clearTimeout(t),
  );
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

/** A free TCP port on 127.0.0.1 (the kernel picks it). */
function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** Whether a redis-server on `port` answers PING. */
function redisAnswers(port) {
  return new Promise((res) => {
    const s = net.connect(port, '127.0.0.1');
    const done = (ok) => {
      s.destroy();
      res(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => done(d.toString().includes('PONG')));
  });
}

/** Children get the environment without any ROOMCAST_* setting of the caller's: only what is given here. */
function childEnv(extra) {
  const e = {};
  for (const [k, v] of Object.entries(env)) if (!k.startsWith('ROOMCAST_')) e[k] = v;
  return Object.assign(e, extra);
}

function start(bin, args, extraEnv) {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(extraEnv) });
  cleanups.push(() => child.kill('SIGTERM'));
  return child;
}

async function startRedis() {
  const bin = env.REDIS_BIN ?? 'redis-server';
  for (let i = 0; i < 5; i++) {
    const port = await freePort();
    const child = start(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmpdir()]);
    const exited = new Promise((r) => child.on('exit', () => r('exited')));
    for (let t = 0; t < 100; t++) {
      if (await redisAnswers(port)) return port;
      if ((await Promise.race([exited, new Promise((r) => setTimeout(() => r('wait'), 100))])) === 'exited') break;
    }
    child.kill('SIGKILL');
  }
  throw new Error('could not start redis-server on a free port');
}

/** Starts a node; resolves with its base URL once it logs its address. */
async function startNode(bin, id, redisPort) {
  const child = start(
    bin,
    ['--auth', 'none', '--listen', '127.0.0.1:0', '--node-id', id, '--redis-url', `redis://127.0.0.1:${redisPort}/`],
    // The key through the environment, as an operator would pass a secret.
    { ROOMCAST_ADMIN_KEY: KEY, ROOMCAST_NODE_STATS_INTERVAL: '1', ROOMCAST_LOG_LEVEL: 'warn,roomcast_gateway=info' },
  );
  const addr = await withTimeout(
    new Promise((res, rej) => {
      let buf = '';
      const onData = (d) => {
        buf += d.toString();
        const m = buf.match(/http:\/\/127\.0\.0\.1:(\d{2,5})/);
        if (m) res(`127.0.0.1:${m[1]}`);
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.on('exit', (code) => rej(new Error(`${id} exited with ${code} before it was ready: ${buf.slice(-2000)}`)));
    }),
    20_000,
    `${id} ready line`,
  );
  log(`${id} ready at ${addr}`);
  return `http://${addr}`;
}

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

async function main() {
  const bin = [env.ROOMCAST_BIN, join(repoRoot, 'target/release/roomcast'), join(repoRoot, 'target/debug/roomcast')].find(
    (p) => p && existsSync(p),
  );
  if (!bin) throw new Error('no roomcast binary: build it (cargo build -p roomcast-gateway) or set ROOMCAST_BIN');
  if (!existsSync(chromiumPath)) throw new Error(`no browser at ${chromiumPath}: apt-get install -y chromium`);
  const tmp = await mkdtemp(join(tmpdir(), 'roomcast-admin-e2e-'));

  const redisPort = await startRedis();
  const bases = [];
  for (const id of NODES) bases.push(await startNode(bin, id, redisPort));

  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
    timeout: 30_000,
  });
  cleanups.unshift(() => browser.close());
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && log(`console: ${m.text()}`));
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));

  await page.goto(`${bases[0]}/admin`, { timeout: STEP_TIMEOUT });
  assert(new URL(page.url()).pathname === '/admin/', `redirected to /admin/, at ${page.url()}`);

  // A wrong key: refused, the page asks again.
  await page.fill('#key', 'this-is-not-the-admin-key');
  await page.click('#open');
  await page.waitForFunction(() => document.getElementById('status').textContent.includes('refused'), null, {
    timeout: STEP_TIMEOUT,
  });
  assert(await page.isVisible('#key'), 'the key is asked for again after a refusal');

  // The right key: both nodes listed.
  await page.fill('#key', KEY);
  await page.click('#open');
  await page.waitForFunction(
    (ids) => {
      const t = document.querySelector('#nodes tbody')?.textContent ?? '';
      return ids.every((id) => t.includes(id));
    },
    NODES,
    { timeout: STEP_TIMEOUT },
  );
  const text = await page.textContent('#nodes tbody');
  for (const id of NODES) assert(text.includes(id), `node list shows ${id}: ${text}`);
  assert(text.includes(`${NODES[0]} (this node)`), `the node serving the page is marked: ${text}`);
  const rows = await page.$$eval('#nodes tbody tr', (trs) => trs.length);
  assert(rows === 2, `two rows in the node list, got ${rows}`);

  // A room lookup works from the page.
  await page.fill('#room-name', 'lobby');
  await page.press('#room-name', 'Enter');
  await page.waitForSelector('#room:not([hidden])', { timeout: STEP_TIMEOUT });

  // The screenshot, taken and checked.
  const shot = join(tmp, 'admin-nodes.png');
  await page.screenshot({ path: shot, fullPage: true });
  const st = await stat(shot);
  assert(st.isFile() && st.size > 0, `screenshot written (${st.size} bytes)`);
  const png = await readFile(shot);
  assert(png.subarray(0, 8).equals(PNG_MAGIC), 'the screenshot is a PNG');
  const width = png.readUInt32BE(16);
  const height = png.readUInt32BE(20);
  assert(width > 0 && height > 0, `PNG of ${width}x${height}`);
  log(`screenshot ${shot}: ${st.size} bytes, ${width}x${height}`);
  if (env.ROOMCAST_E2E_ARTIFACTS) {
    await mkdir(env.ROOMCAST_E2E_ARTIFACTS, { recursive: true });
    await copyFile(shot, join(env.ROOMCAST_E2E_ARTIFACTS, 'admin-nodes.png'));
  }

  // The key never went into a URL.
  assert(!requests.some((u) => u.includes(KEY)), 'no request URL carries the key');
  assert(errors.length === 0, `no page errors: ${errors.join('; ')}`);
  await rm(tmp, { recursive: true, force: true });
}

let rc = 0;
try {
  await withTimeout(main(), 120_000, 'the whole admin e2e');
  log('ok   admin page lists both nodes (screenshot checked)');
  console.log('1 passed, 0 failed');
} catch (err) {
  rc = 1;
  log(`FAIL admin page: ${err?.stack ?? err}`);
  console.log('0 passed, 1 failed');
}
for (const c of cleanups) {
  try {
    await c();
  } catch {
    // already gone
  }
}
process.exit(rc);
