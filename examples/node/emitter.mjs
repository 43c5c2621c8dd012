// Publish to a roomcast room (or a user) from a Node backend by writing the bus envelope to
// Redis (docs/protocol.md section 6, the emitter path). No offset, no history: use
// POST /api/publish when you need those.
//
// One Redis (nodes with --redis-url, `pattern` or `rooms` mode): PUBLISH to
// `<prefix>:room:<room>` / `<prefix>:user:<user>`. Redis Cluster (nodes with
// --redis-cluster-urls): SPUBLISH to `<prefix>:room:{<room>}` / `<prefix>:user:{<user>}`
// (section 6b) through ioredis' Cluster client, which routes it to the shard owning the
// slot. The cluster path is taken with --cluster or when ROOMCAST_REDIS_CLUSTER_URLS is set
// (comma-separated seed URLs, as the nodes take).
//
//   cd examples/node && npm install
//   node emitter.mjs redis://127.0.0.1:6379 lobby '{"text":"hello"}'
//   node emitter.mjs --cluster redis://127.0.0.1:7000,redis://127.0.0.1:7001 lobby '{"text":"hi"}'
//   node emitter.mjs --user alice redis://127.0.0.1:6379 - '{"text":"psst"}'
import Redis from 'ioredis';
import { encode } from '@msgpack/msgpack';
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

export const roomChannel = (prefix, room, cluster) =>
  cluster ? `${prefix}:room:{${room}}` : `${prefix}:room:${room}`;
export const userChannel = (prefix, user, cluster) =>
  cluster ? `${prefix}:user:{${user}}` : `${prefix}:user:${user}`;

// A plain client for one Redis; a cluster client (slot map from the seeds, follows
// MOVED/ASK) for Redis Cluster.
function connect(urls, cluster) {
  const seeds = urls.split(',').map((u) => u.trim()).filter(Boolean);
  if (seeds.length === 0) throw new Error('no Redis URL given');
  if (!cluster) return new Redis(seeds[0]);
  return new Redis.Cluster(
    seeds.map((u) => {
      const x = new URL(u);
      return { host: x.hostname, port: Number(x.port || 6379) };
    }),
    // Give up (an error, not a hang) when no seed answers.
    { clusterRetryStrategy: (times) => (times > 5 ? null : 200) },
  );
}

async function send(urls, channel, envelope, cluster) {
  const redis = connect(urls, cluster);
  try {
    const payload = Buffer.from(encode(envelope));
    // Resolves to how many subscribers (nodes) received it; with SPUBLISH, those on the shard.
    return cluster ? await redis.spublish(channel, payload) : await redis.publish(channel, payload);
  } finally {
    redis.disconnect();
  }
}

// A `message` to every member of `room`.
export async function emit(url, room, event, data, prefix = 'roomcast', cluster = false) {
  const envelope = {
    v: 1,
    node: 'emitter-node',
    msg: { type: 'message', room, event, data, from: 'backend', ts: Date.now() },
  };
  return send(url, roomChannel(prefix, room, cluster), envelope, cluster);
}

// A `direct` message to every connection of `user`.
export async function emitToUser(url, user, event, data, prefix = 'roomcast', cluster = false) {
  const envelope = {
    v: 1,
    node: 'emitter-node',
    msg: { type: 'direct', to: user, from: 'backend', event, data, ts: Date.now() },
  };
  return send(url, userChannel(prefix, user, cluster), envelope, cluster);
}

const isMain = process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href;
if (isMain) {
  const envCluster = process.env.ROOMCAST_REDIS_CLUSTER_URLS || '';
  const args = process.argv.slice(2);
  let cluster = Boolean(envCluster);
  let user = null;
  const rest = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--cluster') cluster = true;
    else if (args[i] === '--user') user = args[++i];
    else rest.push(args[i]);
  }
  const [arg, room = 'lobby', data = '{"hello":"from node"}', prefix = 'roomcast'] = rest;
  const url = arg || envCluster || 'redis://127.0.0.1:6379';
  const n = user
    ? await emitToUser(url, user, 'node', JSON.parse(data), prefix, cluster)
    : await emit(url, room, 'node', JSON.parse(data), prefix, cluster);
  console.log(n);
}
