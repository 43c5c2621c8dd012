// A stand-in for a roomcast node, for trying the demo before the real server is there:
// --auth none semantics, standalone, JSON over /ws, /demo from demo/dist. A small subset of
// docs/protocol.md (welcome, join with history/since, leave, publish with ack/echo/volatile, presence,
// member events, ping; /sse with since and POST /client/commands); no JWT, no limits.
// Not a reference: the Rust node is.
// Usage: node test/e2e/mock-node.mjs [port]   (listens on 127.0.0.1 only, prints "listening on 127.0.0.1:PORT")
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const dist = join(dirname(fileURLToPath(import.meta.url)), '../../demo/dist');
const types = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };

export function startMockNode(port = 0) {
  const rooms = new Map(); // name -> {epoch, offset, history: [], members: Map<user, Set<conn>>}
  const acks = new Map(); // user:id -> ack
  let nextConn = 0;
  const room = (name) => {
    let r = rooms.get(name);
    if (!r) rooms.set(name, (r = { epoch: 'mock-' + Date.now().toString(36), offset: 0, history: [], members: new Map() }));
    return r;
  };
  const sse = new Set(); // {res, rooms: Set}
  const deliverSse = (msg) => {
    for (const s of sse) {
      if (s.rooms.has(msg.room) && msg.offset !== undefined) {
        s.res.write(`id: ${msg.room}:${msg.offset}\nevent: message\ndata: ${JSON.stringify(msg)}\n\n`);
      } else if (s.rooms.has(msg.room)) s.res.write(`event: message\ndata: ${JSON.stringify(msg)}\n\n`);
    }
  };
  // The commands of POST /client/commands and of /ws share this.
  let deliverRoom = () => {};
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const path = url.pathname;
    if (path === '/sse' && req.method === 'GET') {
      const names = (url.searchParams.get('rooms') ?? '').split(',').filter(Boolean);
      const since = new Map(
        (url.searchParams.get('since') ?? '').split(',').filter(Boolean).map((x) => {
          const i = x.lastIndexOf(':');
          return [x.slice(0, i), Number(x.slice(i + 1))];
        }),
      );
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.write(': hello\n\n');
      const s = { res, rooms: new Set(names) };
      for (const n of names) {
        if (!since.has(n)) continue;
        for (const h of room(n).history) if (h.offset > since.get(n)) res.write(`id: ${n}:${h.offset}\nevent: message\ndata: ${JSON.stringify(h)}\n\n`);
      }
      sse.add(s);
      const hb = setInterval(() => res.write(': hb\n\n'), 15_000);
      req.on('close', () => {
        clearInterval(hb);
        sse.delete(s);
      });
      return;
    }
    if (path === '/client/commands' && req.method === 'POST') {
      let body = '';
      for await (const chunk of req) body += chunk;
      let cmds;
      try {
        cmds = JSON.parse(body);
      } catch {
        return res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'invalid_message', message: 'not JSON' } }));
      }
      const user = `http-${req.socket.remotePort}`;
      const replies = [];
      for (const m of Array.isArray(cmds) ? cmds : [cmds]) {
        const reply = (x) => replies.push(m.id !== undefined ? { ...x, id: m.id } : x);
        if (m.type === 'publish') {
          const key = `${user}:${m.id}`;
          if (m.id !== undefined && acks.has(key)) { replies.push(acks.get(key)); continue; }
          const offset = deliverRoom(m, user);
          if (m.id !== undefined) {
            const ack = { type: 'ack', id: m.id, ...(offset ? { offset } : {}) };
            acks.set(key, ack);
            replies.push(ack);
          }
        } else if (m.type === 'presence') {
          const r = room(m.room);
          const members = [...r.members.entries()].map(([u, c]) => ({ user: u, connections: c.size }));
          reply({ type: 'presence', room: m.room, members, count: { users: members.length, connections: members.length } });
        } else if (m.type === 'ping') reply({ type: 'pong' });
        else reply({ type: 'error', code: 'unknown_type', message: String(m.type) });
      }
      return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(replies));
    }
    if (path === '/ws') return res.writeHead(426).end();
    const file = path === '/demo' || path === '/demo/' ? 'index.html' : path.startsWith('/demo/') ? path.slice(6) : '';
    if (!['index.html', 'app.js', 'style.css'].includes(file)) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': types[file.split('.').pop()] }).end(await readFile(join(dist, file)));
  });
  const wss = new WebSocketServer({ server, path: '/ws', handleProtocols: (p) => (p.has('roomcast.v1.json') ? 'roomcast.v1.json' : false) });
  const toRoomAll = (r, m, except) => {
    for (const conns of r.members.values()) for (const c of conns) if (c !== except) c.sendMsg(m);
    deliverSse(m);
  };
  deliverRoom = (m, from, except) => {
    const r = room(m.room);
    const msg = { type: 'message', room: m.room, event: m.event, data: m.data, from, ts: Date.now() };
    if (!m.volatile) {
      msg.offset = ++r.offset;
      r.history.push(msg);
      if (r.history.length > 1000) r.history.shift();
    }
    toRoomAll(r, msg, except);
    return msg.offset;
  };
  wss.on('connection', (ws) => {
    const user = `c${++nextConn}`;
    const joined = new Set();
    const send = (m) => ws.readyState === 1 && ws.send(JSON.stringify(m));
    ws.user = user;
    ws.sendMsg = send;
    const toRoom = (r, m, except) => {
      for (const conns of r.members.values()) for (const c of conns) if (c !== except) c.sendMsg(m);
    };
    const leave = (name) => {
      const r = room(name);
      joined.delete(name);
      const conns = r.members.get(user);
      conns?.delete(ws);
      if (conns && conns.size === 0) {
        r.members.delete(user);
        toRoom(r, { type: 'member_left', room: name, user });
      }
    };
    send({ type: 'welcome', session: user, node: 'mock', user, heartbeat: 25, auth: 'none' });
    ws.on('message', (raw) => {
      let m;
      try {
        m = JSON.parse(raw.toString());
      } catch {
        return send({ type: 'error', code: 'invalid_message', message: 'not JSON' });
      }
      const reply = (x) => send(m.id !== undefined ? { ...x, id: m.id } : x);
      switch (m.type) {
        case 'join': {
          const r = room(m.room);
          let messages = [];
          let recovered = false;
          if (m.since && String(m.since.epoch) === r.epoch) {
            messages = r.history.filter((h) => h.offset > m.since.offset);
            recovered = true;
          } else if (m.history) messages = r.history.slice(-m.history);
          joined.add(m.room);
          const first = !r.members.has(user);
          if (first) r.members.set(user, new Set());
          r.members.get(user).add(ws);
          reply({ type: 'joined', room: m.room, offset: r.offset, epoch: r.epoch, recovered, messages });
          if (first) toRoom(r, { type: 'member_joined', room: m.room, user }, ws);
          return;
        }
        case 'leave':
          leave(m.room);
          return reply({ type: 'left', room: m.room });
        case 'publish': {
          if (!joined.has(m.room)) return reply({ type: 'error', code: 'not_joined', message: 'join first' });
          const key = `${user}:${m.id}`;
          if (m.id !== undefined && acks.has(key)) return send(acks.get(key));
          const offset = deliverRoom(m, user, m.echo ? undefined : ws);
          if (m.id !== undefined) {
            const ack = { type: 'ack', id: m.id, ...(offset ? { offset } : {}) };
            acks.set(key, ack);
            send(ack);
          }
          return;
        }
        case 'presence': {
          const r = room(m.room);
          const members = [...r.members.entries()].map(([u, c]) => ({ user: u, connections: c.size }));
          return reply({ type: 'presence', room: m.room, members, count: { users: members.length, connections: members.reduce((a, x) => a + x.connections, 0) } });
        }
        case 'ping':
          return reply({ type: 'pong' });
        default:
          return reply({ type: 'error', code: 'unknown_type', message: String(m.type) });
      }
    });
    ws.on('close', () => {
      for (const name of [...joined]) leave(name);
    });
  });
  const close = () => {
    for (const s of sse) s.res.end();
    for (const c of wss.clients) c.terminate();
    wss.close();
    server.close();
  };
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve({ port: server.address().port, close })));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { port } = await startMockNode(Number(process.argv[2] ?? 0));
  console.log(`listening on 127.0.0.1:${port}`);
}
