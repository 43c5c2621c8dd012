import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { describeCloseCode } from '../../src/index.js';
import { FakeEventSource, FakeWebSocket, fakeFetch } from './fakes.js';
import { makeClient, record } from './helpers.js';

describe('misc', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('a server error without an id is an error event', () => {
    const client = makeClient();
    const log = record(client, ['error']);
    FakeWebSocket.last().welcome();
    FakeWebSocket.last().receive({ type: 'error', code: 'invalid_message', message: 'bad frame' });
    expect(log[0]![1]).toMatchObject({ code: 'invalid_message', message: 'bad frame' });
    client.disconnect();
  });

  it('an undecodable frame is an error event, not a crash', () => {
    const client = makeClient();
    const log = record(client, ['error']);
    const ws = FakeWebSocket.last();
    ws.welcome();
    ws.onmessage!({ data: '{not json' });
    expect(log).toHaveLength(1);
    expect(client.state).toBe('connected');
    client.disconnect();
  });

  it('a listener that throws does not break the client', () => {
    const client = makeClient();
    client.on('connected', () => {
      throw new Error('app bug');
    });
    FakeWebSocket.last().welcome();
    expect(client.state).toBe('connected');
    // the error is rethrown later, outside the client's code, so that it is still reported
    expect(() => vi.runOnlyPendingTimers()).toThrow('app bug');
    client.disconnect();
  });

  it('leaving a room whose join is in flight sends leave and drops its queued publishes', async () => {
    const client = makeClient();
    const room = client.join('lobby');
    const ws = FakeWebSocket.last();
    ws.welcome();
    const p = room.publish('chat', 1);
    await room.leave();
    await expect(p).rejects.toMatchObject({ code: 'left' });
    expect(ws.lastOfType('leave')).toEqual({ type: 'leave', room: 'lobby' });
    ws.receive({ type: 'joined', room: 'lobby', offset: 0, epoch: 'e', recovered: false, messages: [] });
    expect(room.state).toBe('left');
    await expect(room.publish('chat', 2)).rejects.toMatchObject({ code: 'left' });
    client.disconnect();
  });

  it('HTTP 401 on the fallback counts as 4002: one token refresh, then give up', async () => {
    const f = fakeFetch(() => ({ status: 401, body: { error: { code: 'unauthorized', message: 'token expired' } } }));
    let n = 0;
    const client = makeClient({ transport: 'http', EventSource: FakeEventSource as any, fetch: f.fetch, token: () => `t${++n}` });
    const room = client.join('a');
    await vi.advanceTimersByTimeAsync(0);
    FakeEventSource.last().open();
    const p = room.publish('chat', 1);
    p.catch(() => {});
    await vi.advanceTimersByTimeAsync(0);
    expect(f.calls[0]!.headers.authorization).toBe('Bearer t1');
    await expect(p).rejects.toMatchObject({ code: 'unauthorized' });
    expect(client.state).toBe('connecting');
    expect(FakeEventSource.last().query.get('token')).toBe('t2');
    client.disconnect();
  });

  it('describes close codes', () => {
    expect(describeCloseCode(4002)).toBe('invalid or expired token');
    expect(describeCloseCode(4999)).toBe('closed (4999)');
  });

  it('connect() after closed starts over; disconnect() stops reconnecting', () => {
    const client = makeClient({ reconnect: { baseMs: 10, capMs: 10, maxAttempts: 0 } });
    FakeWebSocket.last().serverClose(1006);
    expect(client.state).toBe('closed');
    client.connect();
    expect(FakeWebSocket.instances).toHaveLength(2);
    client.disconnect();
    vi.advanceTimersByTime(1000);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(client.state).toBe('disconnected');
  });
});
