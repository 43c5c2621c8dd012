// Publish to a roomcast room from a Node backend by writing the bus envelope to Redis
// (docs/protocol.md section 6, the emitter path). No offset, no history: use POST /api/publish
// when you need those.
//
//   cd examples/node && npm install
//   node emitter.mjs redis://127.0.0.1:6379 lobby '{"text":"hello"}'
import Redis from 'ioredis';
import { encode } from '@msgpack/msgpack';

export async function emit(url, room, event, data, prefix = 'roomcast') {
  const redis = new Redis(url);
  try {
    const envelope = {
      v: 1,
      node: 'emitter-node',
      msg: { type: 'message', room, event, data, from: 'backend', ts: Date.now() },
    };
    // Resolves to how many nodes received it.
    return await redis.publish(`${prefix}:room:${room}`, Buffer.from(encode(envelope)));
  } finally {
    redis.disconnect();
  }
}

const [url = 'redis://127.0.0.1:6379', room = 'lobby', data = '{"hello":"from node"}', prefix = 'roomcast'] =
  process.argv.slice(2);
console.log(await emit(url, room, 'node', JSON.parse(data), prefix));
