// Backend API publish: `POST /api/publish` with `Authorization: Bearer <API_KEY>` at a
// constant RATE per second, while RECEIVERS WebSocket clients (spread over WS_URLS)
// sit in the rooms and measure delivery latency from the send timestamp in `data.t`.
// Env: BASE_URL / HTTP_URLS / WS_URLS, API_KEY (required), JWT_SECRET, RATE (50),
//      DURATION (15s), ROOMS (2), RECEIVERS (4), P95_MS / P99_MS.
import http from 'k6/http';
import ws from 'k6/ws';
import { check } from 'k6';
import { Trend, Rate, Counter } from 'k6/metrics';
import { httpUrl, wsUrl, intEnv, strEnv, runPrefix, parse, API_KEY, P95_MS, P99_MS } from './lib/common.js';

const delivery = new Trend('api_delivery_latency_ms', true);
const received = new Counter('api_messages_received');
const publishErrors = new Rate('api_publish_errors');

const ROOMS = intEnv('ROOMS', 2);
const DURATION = strEnv('DURATION', '15s');
const RECEIVERS = intEnv('RECEIVERS', 4);

if (!API_KEY) throw new Error('api-publish.js needs API_KEY (a key the nodes were started with, --api-keys)');

export const options = {
  scenarios: {
    receivers: {
      executor: 'per-vu-iterations', vus: RECEIVERS, iterations: 1, exec: 'receiver',
      maxDuration: DURATION,
    },
    publishers: {
      executor: 'constant-arrival-rate', rate: intEnv('RATE', 50), timeUnit: '1s',
      duration: DURATION, preAllocatedVUs: intEnv('VUS', 10), exec: 'publisher', startTime: '1s',
    },
  },
  thresholds: {
    'http_req_duration{scenario:publishers}': [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    'http_req_failed{scenario:publishers}': ['rate<0.01'],
    api_publish_errors: ['rate<0.01'],
    api_delivery_latency_ms: [`p(99)<${P99_MS}`],
    api_messages_received: ['count>0'],
    checks: ['rate>0.99'],
  },
};

function seconds(d) {
  const m = /^(\d+)(ms|s|m)?$/.exec(d);
  if (!m) return 15;
  const n = parseInt(m[1], 10);
  return m[2] === 'ms' ? n / 1000 : m[2] === 'm' ? n * 60 : n;
}

export function setup() {
  return { prefix: runPrefix('api') };
}

export function receiver(data) {
  const room = `${data.prefix}-${__VU % ROOMS}`;
  let joined = false;
  const res = ws.connect(wsUrl(__VU, `api-rx-${__VU}`), {}, (socket) => {
    socket.on('message', (raw) => {
      const m = parse(raw);
      if (!m) return;
      if (m.type === 'welcome') socket.send(JSON.stringify({ type: 'join', room, id: 'j' }));
      else if (m.type === 'joined') joined = true;
      else if (m.type === 'message') {
        received.add(1);
        if (m.data && typeof m.data.t === 'number') delivery.add(Date.now() - m.data.t);
      }
    });
    // Stay until the publishers are done (they start 1 s late), then leave.
    socket.setTimeout(() => socket.close(), (seconds(DURATION) + 1.5) * 1000);
  });
  check(res, { 'upgrade 101': (r) => r && r.status === 101 });
  check(joined, { joined: (v) => v });
}

export function publisher(data) {
  const room = `${data.prefix}-${__ITER % ROOMS}`;
  const res = http.post(`${httpUrl(__ITER)}/api/publish`,
    JSON.stringify({ room, event: 'api', data: { t: Date.now(), i: __ITER } }),
    { headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY}` } });
  const ok = res.status === 200 && (() => {
    const b = parse(res.body);
    return b && typeof b.offset === 'number';
  })();
  publishErrors.add(!ok);
  check(res, { 'publish 200 with offset': () => ok });
}
