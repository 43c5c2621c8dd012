import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeNetwork, FakeWebSocket } from './fakes.js';
import { makeClient, record } from './helpers.js';

describe('heartbeat watchdog', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('pings every welcome.heartbeat seconds and stays up while pongs come back', () => {
    const client = makeClient();
    const ws = FakeWebSocket.last();
    ws.welcome(10);
    vi.advanceTimersByTime(9_999);
    expect(ws.ofType('ping')).toHaveLength(0);
    vi.advanceTimersByTime(1);
    expect(ws.ofType('ping')).toHaveLength(1);
    for (let i = 0; i < 5; i++) {
      ws.receive({ type: 'pong', id: ws.lastOfType('ping').id });
      vi.advanceTimersByTime(10_000);
    }
    expect(ws.ofType('ping')).toHaveLength(6);
    expect(new Set(ws.ofType('ping').map((p) => p.id)).size).toBe(6);
    expect(client.state).toBe('connected');
    expect(ws.closedByClient).toBeUndefined();
    client.disconnect();
  });

  it('treats a missing pong as a dead connection: closes with 4000 and reconnects', () => {
    const client = makeClient({ reconnect: { baseMs: 100, capMs: 100 } });
    const log = record(client, ['disconnected', 'reconnecting']);
    const ws = FakeWebSocket.last();
    ws.welcome(20);
    vi.advanceTimersByTime(20_000); // ping sent
    expect(ws.ofType('ping')).toHaveLength(1);
    vi.advanceTimersByTime(9_999); // default timeout: min(interval, 10 s)
    expect(client.state).toBe('connected');
    vi.advanceTimersByTime(1);
    expect(ws.closedByClient).toEqual({ code: 4000, reason: 'heartbeat timeout' });
    expect(client.state).toBe('reconnecting');
    expect(log[0]).toEqual(['disconnected', { code: 4000, reason: 'heartbeat timeout', willReconnect: true }]);
    vi.advanceTimersByTime(100);
    expect(FakeWebSocket.instances).toHaveLength(2);
    client.disconnect();
  });

  it('any frame after a ping proves the connection alive', () => {
    const client = makeClient({ heartbeat: { intervalMs: 1000, timeoutMs: 500 } });
    const ws = FakeWebSocket.last();
    ws.welcome(30);
    vi.advanceTimersByTime(1000);
    vi.advanceTimersByTime(400);
    ws.receive({ type: 'member_joined', room: 'x', user: 'u' });
    vi.advanceTimersByTime(500);
    expect(client.state).toBe('connected');
    client.disconnect();
  });

  it('heartbeat: false sends no pings', () => {
    const client = makeClient({ heartbeat: false });
    const ws = FakeWebSocket.last();
    ws.welcome(1);
    vi.advanceTimersByTime(60_000);
    expect(ws.ofType('ping')).toHaveLength(0);
    expect(client.state).toBe('connected');
    client.disconnect();
  });
});

describe('online/offline awareness', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('drops the connection when offline, waits, and reconnects at once when online', () => {
    const network = new FakeNetwork();
    const client = makeClient({ network, reconnect: { baseMs: 5000, capMs: 5000 } });
    FakeWebSocket.last().welcome();
    network.goOffline();
    expect(client.state).toBe('disconnected');
    expect(FakeWebSocket.last().closedByClient).toBeDefined();
    vi.advanceTimersByTime(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1); // no attempts while offline
    network.goOnline();
    expect(FakeWebSocket.instances).toHaveLength(2); // no backoff wait
    expect(client.state).toBe('connecting');
    FakeWebSocket.last().welcome();
    expect(client.state).toBe('connected');
    client.disconnect();
  });

  it('an online event cuts a pending backoff short', () => {
    const network = new FakeNetwork();
    const client = makeClient({ network, reconnect: { baseMs: 60_000, capMs: 60_000 } });
    FakeWebSocket.last().serverClose(1006);
    expect(client.state).toBe('reconnecting');
    network.goOnline();
    expect(FakeWebSocket.instances).toHaveLength(2);
    client.disconnect();
  });

  it('does not connect while starting offline', () => {
    const network = new FakeNetwork();
    network.online = false;
    const client = makeClient({ network });
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(client.state).toBe('disconnected');
    network.goOnline();
    expect(FakeWebSocket.instances).toHaveLength(1);
    client.disconnect();
  });
});
