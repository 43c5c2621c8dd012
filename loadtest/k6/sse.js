// SSE readers: VUs hold `GET /sse?rooms=...` streams open while one VU publishes
// through the backend API (when API_KEY is set).
//
// Limitation: k6 has no SSE client and its HTTP client returns a body only when the
// response ends. A reader therefore holds its stream for STREAM_S seconds and the
// request ends by k6's timeout; a stream is counted healthy when it was not refused
// (no 4xx/5xx, and it stayed open until the timeout). Event contents and delivery
// latency over SSE are measured by roomcast-loadgen and the gateway's own tests,
// not here. This script measures what an SSE reader costs to hold and to open.
// Env: BASE_URL or HTTP_URLS, VUS (10), DURATION (15s), ROOMS (2), STREAM_S (5),
//      API_KEY (optional: publishes during the run), PUBLISH_MS (200).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Rate, Trend, Counter } from 'k6/metrics';
import { httpUrl, intEnv, strEnv, runPrefix, API_KEY } from './lib/common.js';

const healthy = new Rate('sse_stream_healthy');
const held = new Trend('sse_stream_held_ms', true);
const published = new Counter('sse_published');

const ROOMS = intEnv('ROOMS', 2);
const STREAM_S = intEnv('STREAM_S', 5);
const PUBLISH_MS = intEnv('PUBLISH_MS', 200);
const DURATION = strEnv('DURATION', '15s');

const scenarios = {
  readers: { executor: 'constant-vus', vus: intEnv('VUS', 10), duration: DURATION, exec: 'reader' },
};
if (API_KEY) {
  scenarios.publisher = {
    executor: 'constant-arrival-rate', rate: Math.max(1, Math.round(1000 / PUBLISH_MS)),
    timeUnit: '1s', duration: DURATION, preAllocatedVUs: 2, exec: 'publisher',
  };
}

export const options = {
  scenarios,
  thresholds: {
    sse_stream_healthy: ['rate>0.99'],
    'http_req_failed{scenario:publisher}': ['rate<0.01'],
  },
};

export function setup() {
  return { prefix: runPrefix('sse') };
}

export function reader(data) {
  const rooms = [`${data.prefix}-${__VU % ROOMS}`, `${data.prefix}-${(__VU + 1) % ROOMS}`].join(',');
  const t0 = Date.now();
  const res = http.get(`${httpUrl(__VU)}/sse?rooms=${rooms}`, {
    timeout: `${STREAM_S}s`,
    headers: { Accept: 'text/event-stream' },
    tags: { name: 'sse' },
    responseCallback: http.expectedStatuses(200, 0),
  });
  const ms = Date.now() - t0;
  // Ended by our timeout (error_code 1050) after ~STREAM_S, or a 200 stream the server
  // ended: both fine. A quick status >= 400 or a refused connection is not.
  const ok = (res.error_code === 1050 && ms >= STREAM_S * 900) || res.status === 200;
  healthy.add(ok);
  held.add(ms);
  check(res, { 'sse stream held open': () => ok });
}

export function publisher(data) {
  const room = `${data.prefix}-${__ITER % ROOMS}`;
  const res = http.post(`${httpUrl(0)}/api/publish`,
    JSON.stringify({ room, event: 'tick', data: { t: Date.now() } }),
    { headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY}` } });
  check(res, { 'publish 200': (r) => r.status === 200 });
  published.add(1);
}

export default function (data) {
  reader(data);
  sleep(0.1);
}
