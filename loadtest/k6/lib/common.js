// Shared helpers for the roomcast k6 scripts: URLs and parameters from the
// environment, HS256 token minting (when JWT_SECRET is set), frame helpers.
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
// WS_URLS: comma-separated /ws endpoints (to spread VUs over nodes); default from BASE_URL.
export const WS_URLS = (__ENV.WS_URLS || BASE_URL.replace(/^http/, 'ws') + '/ws').split(',');
export const HTTP_URLS = (__ENV.HTTP_URLS || BASE_URL).split(',').map((u) => u.replace(/\/$/, ''));
export const JWT_SECRET = __ENV.JWT_SECRET || '';
export const API_KEY = __ENV.API_KEY || '';

export function intEnv(name, def) {
  const v = __ENV[name];
  return v === undefined || v === '' ? def : parseInt(v, 10);
}
export function strEnv(name, def) {
  return __ENV[name] === undefined || __ENV[name] === '' ? def : __ENV[name];
}

// A room prefix unique per run (computed once in setup(), passed to the VUs).
export function runPrefix(name) {
  return strEnv('ROOM_PREFIX', `k6-${name}-${Date.now()}`);
}

function b64url(s) {
  return encoding.b64encode(s, 'rawurl');
}

// An HS256 JWT for user `sub` (docs/protocol.md section 2), or '' when JWT_SECRET is unset
// (nodes running with --auth none).
export function token(sub) {
  if (!JWT_SECRET) return '';
  const now = Math.floor(Date.now() / 1000);
  const h = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const p = b64url(JSON.stringify({ sub: String(sub), iat: now, exp: now + 3600 }));
  const sig = crypto.hmac('sha256', JWT_SECRET, `${h}.${p}`, 'base64rawurl');
  return `${h}.${p}.${sig}`;
}

// The /ws URL for VU `vu` (nodes round-robin), with the token when there is one.
export function wsUrl(vu, sub) {
  const base = WS_URLS[vu % WS_URLS.length];
  const t = token(sub);
  return t ? `${base}?token=${t}` : base;
}

export function httpUrl(vu) {
  return HTTP_URLS[vu % HTTP_URLS.length];
}

export function parse(data) {
  try {
    return JSON.parse(data);
  } catch (_) {
    return null;
  }
}

// Thresholds can be loosened or tightened from the environment.
export const P99_MS = intEnv('P99_MS', 250);
export const P95_MS = intEnv('P95_MS', 100);
