// The Node design the seeds teach: `ws` + `ioredis`. Every publish goes to Redis
// (PUBLISH room:<id>); every node PSUBSCRIBEs room:* and delivers to its local members
// from the subscription (its own messages included). JSON messages:
//   {type:"join", room}            -> {type:"joined", room}
//   {type:"leave", room}           -> {type:"left", room}
//   {type:"publish", room, event, data} -> every other member: {type:"message", room, event, data, from, ts}
// With MEMBER_EVENTS=1 a join publishes {type:"member_joined", room, user} to the room
// (and a leave or close "member_left"), delivered like a message; with JWT_SECRET a
// connection needs ?token=<HS256 JWT> (its sub is the user), checked in the handshake.
// Env: PORT (0 = any), HOST (127.0.0.1), REDIS_URL (redis://127.0.0.1:6379),
// MEMBER_EVENTS, JWT_SECRET.
'use strict';
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');
const { userOf } = require('../hs256');

const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT || 0);
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const pub = new Redis(redisUrl);
const sub = new Redis(redisUrl);
const rooms = new Map(); // room -> Set<ws>
let nextId = 1;
const node = `wsredis-${process.pid}`;
const memberEvents = process.env.MEMBER_EVENTS === '1';

/** Publishes a member event of `ws` in `room` (skipped for `ws` itself on delivery). */
function announce(ws, type, room) {
  if (memberEvents) {
    pub.publish('room:' + room, JSON.stringify({ type, room, user: ws.user, from: ws.id }));
  }
}

/** The handshake's token check (ws's verifyClient): the user rides on the request. */
function verifyClient(info) {
  const token = new URL(info.req.url, 'http://peer').searchParams.get('token');
  const user = userOf(token);
  if (user === null) return false;
  info.req.user = user;
  return true;
}

sub.psubscribe('room:*');
sub.on('pmessageBuffer', (_pattern, channel, payload) => {
  const room = channel.toString().slice(5);
  const members = rooms.get(room);
  if (!members) return;
  let from = null;
  // The sender is skipped (no echo), as Socket.IO's socket.to(room) does.
  try { from = JSON.parse(payload).from; } catch (_) { return; }
  const text = payload.toString();
  for (const ws of members) if (ws.id !== from) ws.send(text);
});

const wss = new WebSocketServer({ host, port, perMessageDeflate: false, verifyClient });
wss.on('listening', () => {
  const a = wss.address();
  console.log(`wsredis ${node} listening on ${a.address}:${a.port}`);
});
wss.on('connection', (ws, req) => {
  ws.id = `${node}-${nextId++}`;
  ws.user = req.user || ws.id;
  ws.rooms = new Set();
  ws.on('message', (raw) => {
    let m;
    try { m = JSON.parse(raw); } catch (_) { return ws.send('{"type":"error","code":"invalid_message"}'); }
    if (m.type === 'join' && typeof m.room === 'string') {
      let s = rooms.get(m.room);
      if (!s) rooms.set(m.room, (s = new Set()));
      const fresh = !s.has(ws);
      s.add(ws);
      ws.rooms.add(m.room);
      ws.send(JSON.stringify({ type: 'joined', room: m.room, id: m.id }));
      if (fresh) announce(ws, 'member_joined', m.room);
    } else if (m.type === 'leave' && typeof m.room === 'string') {
      leave(ws, m.room);
      ws.send(JSON.stringify({ type: 'left', room: m.room, id: m.id }));
    } else if (m.type === 'publish' && typeof m.room === 'string') {
      pub.publish('room:' + m.room, JSON.stringify({
        type: 'message', room: m.room, event: m.event, data: m.data, from: ws.id, ts: Date.now(),
      }));
    } else if (m.type === 'ping') {
      ws.send(JSON.stringify({ type: 'pong', id: m.id }));
    }
  });
  ws.on('close', () => { for (const r of ws.rooms) leave(ws, r); });
  ws.on('error', () => {});
});

function leave(ws, room) {
  if (ws.rooms.has(room)) announce(ws, 'member_left', room);
  const s = rooms.get(room);
  if (s) { s.delete(ws); if (s.size === 0) rooms.delete(room); }
  ws.rooms.delete(room);
}

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
