// Connect storm: every iteration opens a WebSocket, waits for `welcome` (auth by token
// when JWT_SECRET is set), joins a room, waits for `joined`, and closes.
// Env: BASE_URL or WS_URLS, JWT_SECRET, VUS (default 20), DURATION (10s), ROOMS (100),
//      P95_MS / P99_MS (thresholds on connect+join time).
import ws from 'k6/ws';
import { check } from 'k6';
import { Trend, Rate, Counter } from 'k6/metrics';
import { wsUrl, intEnv, strEnv, runPrefix, parse, P95_MS, P99_MS } from './lib/common.js';

const connectJoin = new Trend('rc_connect_join_ms', true);
const welcomeTime = new Trend('rc_welcome_ms', true);
const failures = new Rate('rc_errors');
const joined = new Counter('rc_joined');

const ROOMS = intEnv('ROOMS', 100);

export const options = {
  vus: intEnv('VUS', 20),
  duration: strEnv('DURATION', '10s'),
  thresholds: {
    rc_errors: ['rate<0.01'],
    rc_connect_join_ms: [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    rc_joined: ['count>0'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  return { prefix: runPrefix('storm') };
}

export default function (data) {
  const room = `${data.prefix}-${(__VU * 7919 + __ITER) % ROOMS}`;
  const t0 = Date.now();
  let ok = false;
  const res = ws.connect(wsUrl(__VU, `storm-${__VU}`), {}, (socket) => {
    socket.on('message', (raw) => {
      const m = parse(raw);
      if (!m) return;
      if (m.type === 'welcome') {
        welcomeTime.add(Date.now() - t0);
        socket.send(JSON.stringify({ type: 'join', room, id: 1 }));
      } else if (m.type === 'joined' && m.room === room) {
        connectJoin.add(Date.now() - t0);
        joined.add(1);
        ok = true;
        socket.close();
      } else if (m.type === 'error') {
        socket.close();
      }
    });
    socket.on('error', () => socket.close());
    socket.setTimeout(() => socket.close(), 5000);
  });
  check(res, { 'upgrade 101': (r) => r && r.status === 101 });
  check(ok, { 'welcome + joined': (v) => v });
  failures.add(!ok);
}
