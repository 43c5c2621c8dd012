// Socket.IO 4 + @socket.io/redis-adapter, the other peer of the roomcast benchmarks.
// Events: "join" (room, ack) -> ack({room}); "publish" ({room, event, data}) -> the
// room's other members get "message" {room, event, data, from, ts} on every node
// (socket.to(room): local at once, other nodes through Redis).
// Env: PORT (0 = any), HOST (127.0.0.1), REDIS_URL (redis://127.0.0.1:6379).
'use strict';
const http = require('http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const Redis = require('ioredis');

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
io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    if (typeof room !== 'string') return;
    socket.join(room);
    if (typeof ack === 'function') ack({ room });
  });
  socket.on('leave', (room, ack) => {
    socket.leave(room);
    if (typeof ack === 'function') ack({ room });
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
