// Chat rooms: each VU connects, joins one of ROOMS rooms, publishes every
// PUBLISH_MS milliseconds and receives the room's traffic for SESSION_S seconds.
// Latency two ways: end to end from the send timestamp in `data.t`, and server to
// client from the server's `ts` (both clocks are this machine's when run locally).
// Env: BASE_URL or WS_URLS, JWT_SECRET, VUS (10), DURATION (20s), ROOMS (2),
//      PUBLISH_MS (1000), SESSION_S (10), P95_MS / P99_MS.
import ws from 'k6/ws';
import { check } from 'k6';
import { Trend, Rate, Counter } from 'k6/metrics';
import { wsUrl, intEnv, strEnv, runPrefix, parse, P95_MS, P99_MS } from './lib/common.js';

const e2e = new Trend('chat_latency_ms', true);
const fromServer = new Trend('chat_server_to_client_ms', true);
const received = new Counter('chat_messages_received');
const sent = new Counter('chat_messages_sent');
const acks = new Counter('chat_acks');
const errors = new Rate('chat_errors');

const ROOMS = intEnv('ROOMS', 2);
const PUBLISH_MS = intEnv('PUBLISH_MS', 1000);
const SESSION_S = intEnv('SESSION_S', 10);

export const options = {
  vus: intEnv('VUS', 10),
  duration: strEnv('DURATION', '20s'),
  thresholds: {
    chat_latency_ms: [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    chat_errors: ['rate<0.01'],
    chat_messages_received: ['count>0'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  return { prefix: runPrefix('chat') };
}

export default function (data) {
  const room = `${data.prefix}-${__VU % ROOMS}`;
  let joined = false;
  let seq = 0;
  const res = ws.connect(wsUrl(__VU, `chat-${__VU}`), {}, (socket) => {
    socket.on('message', (raw) => {
      const m = parse(raw);
      if (!m) return errors.add(1);
      switch (m.type) {
        case 'welcome':
          socket.send(JSON.stringify({ type: 'join', room, id: 'j' }));
          break;
        case 'joined':
          joined = true;
          errors.add(0);
          socket.setInterval(() => {
            seq += 1;
            sent.add(1);
            socket.send(JSON.stringify({
              type: 'publish', room, event: 'chat', id: seq,
              data: { t: Date.now(), vu: __VU, seq, text: 'hello' },
            }));
          }, PUBLISH_MS);
          break;
        case 'message': {
          const now = Date.now();
          received.add(1);
          if (m.data && typeof m.data.t === 'number') e2e.add(now - m.data.t);
          if (typeof m.ts === 'number') fromServer.add(Math.max(0, now - m.ts));
          break;
        }
        case 'ack':
          acks.add(1);
          errors.add(0);
          break;
        case 'error':
          errors.add(1);
          break;
        default:
          break;
      }
    });
    socket.on('error', () => errors.add(1));
    socket.setTimeout(() => socket.close(), SESSION_S * 1000);
  });
  check(res, { 'upgrade 101': (r) => r && r.status === 101 });
  check(joined, { joined: (v) => v });
}
