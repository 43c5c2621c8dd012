import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { jwtExp } from '../../src/jwt.js';
import { FakeWebSocket, fakeJwt } from './fakes.js';
import { makeClient, record } from './helpers.js';

describe('tokens', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date('2026-11-23T12:00:00Z'));
  });
  afterEach(() => vi.useRealTimers());

  it('reads exp from a JWT without verifying it', () => {
    expect(jwtExp(fakeJwt({ sub: 'u', exp: 1234 }))).toBe(1234);
    expect(jwtExp('not a jwt')).toBeUndefined();
    expect(jwtExp('a.b.c')).toBeUndefined();
  });

  it('puts a static token in the token query parameter', () => {
    makeClient({ token: 'abc.def.ghi' }).disconnect();
    expect(FakeWebSocket.last().query.get('token')).toBe('abc.def.ghi');
    expect(FakeWebSocket.last().protocols).toEqual(['roomcast.v1.json']);
  });

  it('calls the token callback on every connect', async () => {
    let n = 0;
    const token = vi.fn(() => `t${++n}`);
    const client = makeClient({ token, reconnect: { baseMs: 10, capMs: 10 } });
    expect(FakeWebSocket.last().query.get('token')).toBe('t1');
    FakeWebSocket.last().welcome();
    FakeWebSocket.last().serverClose(1001);
    await vi.advanceTimersByTimeAsync(10);
    expect(FakeWebSocket.last().query.get('token')).toBe('t2');
    expect(token).toHaveBeenCalledTimes(2);
    client.disconnect();
  });

  it('waits for an async token callback; a failing callback counts as a failed attempt', async () => {
    let fail = true;
    const client = makeClient({
      token: async () => {
        if (fail) throw new Error('auth service down');
        return 'tok';
      },
      reconnect: { baseMs: 100, capMs: 100 },
    });
    const errors = record(client, ['error']);
    expect(FakeWebSocket.instances).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(0);
    expect(errors[0]![1].message).toBe('auth service down');
    expect(client.state).toBe('reconnecting');
    fail = false;
    await vi.advanceTimersByTimeAsync(100);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(FakeWebSocket.last().query.get('token')).toBe('tok');
    client.disconnect();
  });

  it('4002: refreshes the token once and reconnects at once, then gives up', async () => {
    let n = 0;
    const client = makeClient({ token: () => `t${++n}`, reconnect: { baseMs: 10_000, capMs: 10_000 } });
    const log = record(client, ['reconnecting', 'closed']);
    FakeWebSocket.last().serverClose(4002, 'expired');
    expect(log[0]).toEqual(['reconnecting', { attempt: 0, delayMs: 0, code: 4002, reason: 'expired' }]);
    await vi.advanceTimersByTimeAsync(0);
    expect(FakeWebSocket.last().query.get('token')).toBe('t2');
    FakeWebSocket.last().serverClose(4002, 'expired');
    expect(client.state).toBe('closed');
    expect(log[1]).toEqual(['closed', { code: 4002, reason: 'expired' }]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('4002 after a successful connection gets one more refresh', async () => {
    let n = 0;
    const client = makeClient({ token: () => `t${++n}` });
    FakeWebSocket.last().serverClose(4002);
    await vi.advanceTimersByTimeAsync(0);
    FakeWebSocket.last().welcome();
    FakeWebSocket.last().serverClose(4002);
    await vi.advanceTimersByTimeAsync(0);
    expect(FakeWebSocket.instances).toHaveLength(3);
    expect(client.state).toBe('connecting');
    client.disconnect();
  });

  it('4002 with a static token gives up at once', () => {
    const client = makeClient({ token: 'static' });
    FakeWebSocket.last().serverClose(4002);
    expect(client.state).toBe('closed');
  });

  it('refreshes in place before exp by sending auth, and again after auth_ok', async () => {
    const now = Math.floor(Date.now() / 1000);
    let exp = now + 120;
    const token = vi.fn(() => fakeJwt({ sub: 'u', exp }));
    const client = makeClient({ token, tokenRefreshMarginMs: 30_000, heartbeat: false });
    const ws = FakeWebSocket.last();
    ws.welcome();
    await vi.advanceTimersByTimeAsync(89_999);
    expect(ws.ofType('auth')).toHaveLength(0);
    exp = now + 300;
    await vi.advanceTimersByTimeAsync(1);
    expect(token).toHaveBeenCalledTimes(2);
    const auth = ws.lastOfType('auth');
    expect(jwtExp(auth.token)).toBe(now + 300);
    const refreshed = record(client, ['token']);
    ws.receive({ type: 'auth_ok', exp: now + 300 });
    expect(refreshed).toEqual([['token', { exp: now + 300 }]]);
    // next refresh: 30 s before the new exp
    await vi.advanceTimersByTimeAsync((300 - 90 - 30) * 1000 - 1);
    expect(ws.ofType('auth')).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(ws.ofType('auth')).toHaveLength(2);
    expect(FakeWebSocket.instances).toHaveLength(1); // in place, no reconnect
    client.disconnect();
  });

  it('does not refresh with auth none', async () => {
    const token = vi.fn(() => fakeJwt({ exp: Math.floor(Date.now() / 1000) + 60 }));
    const client = makeClient({ token, heartbeat: false });
    const ws = FakeWebSocket.last();
    ws.welcome(25, { auth: 'none' });
    await vi.advanceTimersByTimeAsync(120_000);
    expect(ws.ofType('auth')).toHaveLength(0);
    client.disconnect();
  });
});
