// Socket.IO 4 + @socket.io/redis-adapter, the other peer of the roomcast benchmarks.
// Events: "join" (room, ack) -> ack({room}); "publish" ({room, event, data}) -> the
// room's other members get "message" {room, event, data, from, ts} on every node
// (socket.to(room): local at once, other nodes through Redis).
// With MEMBER_EVENTS=1 a join emits "member_joined" {room, user} to the room's other
// members (and a leave or disconnect "member_left"); with JWT_SECRET a connection needs
// auth {token: <HS256 JWT>} in its connect packet (its sub is the user), checked by a
// middleware as Socket.IO apps do.
// Env: PORT (0 = any), HOST (127.0.0.1), REDIS_URL (redis://127.0.0.1:6379),
// MEMBER_EVENTS, JWT_SECRET.
'use strict';
const http = require('http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const Redis = require('ioredis');
const { userOf } = require('../hs256');

const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT || 0);
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const pubClient = new Redis(redisUrl);
const subClient = pubClient.duplicate();

const server = http.createServer();
const io = new Server(server, {
  transports: ['websocket'],
  perMessageDeflate: false,
  adapter: createAdapter(pubClient, subClient),
});
const memberEvents = process.env.MEMBER_EVENTS === '1';
io.use((socket, next) => {
  const user = userOf(socket.handshake.auth && socket.handshake.auth.token);
  if (user === null) return next(new Error('unauthorized'));
  socket.data.user = user || socket.id;
  return next();
});
io.on('connection', (socket) => {
  const announce = (type, room) => {
    if (memberEvents) socket.to(room).emit(type, { room, user: socket.data.user });
  };
  socket.on('join', (room, ack) => {
    if (typeof room !== 'string') return;
    const fresh = !socket.rooms.has(room);
    socket.join(room);
    if (typeof ack === 'function') ack({ room });
    if (fresh) announce('member_joined', room);
  });
  socket.on('leave', (room, ack) => {
    if (socket.rooms.has(room)) announce('member_left', room);
    socket.leave(room);
    if (typeof ack === 'function') ack({ room });
  });
  socket.on('disconnecting', () => {
    for (const room of socket.rooms) if (room !== socket.id) announce('member_left', room);
  });
  socket.on('publish', (m, ack) => {
    if (!m || typeof m.room !== 'string') return;
    socket.to(m.room).emit('message', {
      room: m.room, event: m.event, data: m.data, from: socket.id, ts: Date.now(),
    });
    if (typeof ack === 'function') ack({});
  });
});
server.listen(port, host, () => {
  const a = server.address();
  console.log(`socketio listening on ${a.address}:${a.port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
