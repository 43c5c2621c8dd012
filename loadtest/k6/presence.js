// Presence: VUs join a few shared rooms and ask `presence` every PRESENCE_MS; the
// round trip and the member count are checked (at least the asker itself).
// Env: BASE_URL or WS_URLS, JWT_SECRET, VUS (10), DURATION (15s), ROOMS (2),
//      PRESENCE_MS (500), SESSION_S (10), P95_MS / P99_MS.
import ws from 'k6/ws';
import { check } from 'k6';
import { Trend, Rate, Counter } from 'k6/metrics';
import { wsUrl, intEnv, strEnv, runPrefix, parse, P95_MS, P99_MS } from './lib/common.js';

const rtt = new Trend('presence_rtt_ms', true);
const replies = new Counter('presence_replies');
const errors = new Rate('presence_errors');

const ROOMS = intEnv('ROOMS', 2);
const PRESENCE_MS = intEnv('PRESENCE_MS', 500);
const SESSION_S = intEnv('SESSION_S', 10);

export const options = {
  vus: intEnv('VUS', 10),
  duration: strEnv('DURATION', '15s'),
  thresholds: {
    presence_rtt_ms: [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    presence_errors: ['rate<0.01'],
    presence_replies: ['count>0'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  return { prefix: runPrefix('presence') };
}

export default function (data) {
  const room = `${data.prefix}-${__VU % ROOMS}`;
  const pending = {};
  let n = 0;
  let joined = false;
  const res = ws.connect(wsUrl(__VU, `presence-${__VU}`), {}, (socket) => {
    socket.on('message', (raw) => {
      const m = parse(raw);
      if (!m) return errors.add(1);
      if (m.type === 'welcome') {
        socket.send(JSON.stringify({ type: 'join', room, id: 'j' }));
      } else if (m.type === 'joined') {
        joined = true;
        socket.setInterval(() => {
          n += 1;
          pending[n] = Date.now();
          socket.send(JSON.stringify({ type: 'presence', room, id: n }));
        }, PRESENCE_MS);
      } else if (m.type === 'presence') {
        const t = pending[m.id];
        if (t !== undefined) {
          rtt.add(Date.now() - t);
          delete pending[m.id];
        }
        replies.add(1);
        const ok = Array.isArray(m.members) && m.members.length >= 1;
        errors.add(!ok);
        check(m, { 'presence lists the asker': () => ok });
      } else if (m.type === 'error') {
        errors.add(1);
      }
    });
    socket.on('error', () => errors.add(1));
    socket.setTimeout(() => socket.close(), SESSION_S * 1000);
  });
  check(res, { 'upgrade 101': (r) => r && r.status === 101 });
  check(joined, { joined: (v) => v });
}
