import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeEventSource, fakeFetch } from './fakes.js';
import { makeClient, record, welcome } from './helpers.js';

// client.disconnect() reports how the connection really ended, not a fixed 1000.
describe('disconnect() reports the real close', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('the code and reason of the close event that answers our Close frame', () => {
    const client = makeClient();
    const ws = welcome();
    const log = record(client, ['disconnected', 'state']);
    client.disconnect();
    expect(ws.closedByClient).toEqual({ code: 1000, reason: 'client disconnect' });
    expect(client.state).toBe('disconnected');
    expect(log).toEqual([['state', 'disconnected', 'connected']]); // the event waits for the socket
    ws.serverClose(1000, 'bye');
    expect(log[1]).toEqual(['disconnected', { code: 1000, reason: 'bye', willReconnect: false }]);
    ws.serverClose(1000, 'again'); // reported once
    expect(log).toHaveLength(2);
  });

  it('what the server had sent first (a node going away), not 1000', () => {
    const client = makeClient();
    const ws = welcome();
    const log = record(client, ['disconnected']);
    client.disconnect();
    ws.serverClose(1001, '');
    expect(log).toEqual([['disconnected', { code: 1001, reason: 'node going away', willReconnect: false }]]);
    expect(client.state).toBe('disconnected'); // no reconnect
  });

  it('1006 (close not confirmed) when the socket reports no close within 3 s', () => {
    const client = makeClient();
    const ws = welcome();
    const log = record(client, ['disconnected']);
    client.disconnect();
    vi.advanceTimersByTime(2999);
    expect(log).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(log).toEqual([['disconnected', { code: 1006, reason: 'client disconnect: close not confirmed', willReconnect: false }]]);
    ws.serverClose(1000, ''); // too late: reported once
    expect(log).toHaveLength(1);
  });

  it('a connect() before the close is confirmed reports it first, as not confirmed', () => {
    const client = makeClient();
    const ws = welcome();
    const log = record(client, ['disconnected', 'connecting']);
    client.disconnect();
    client.connect();
    expect(log.map((e) => e[0])).toEqual(['disconnected', 'connecting']);
    expect(log[0]![1]).toMatchObject({ code: 1006, willReconnect: false });
    ws.serverClose(1000, '');
    expect(log).toHaveLength(2);
    client.disconnect();
  });

  it('1000 at once when there is no connection (waiting to reconnect)', () => {
    const client = makeClient({ reconnect: { baseMs: 1000, capMs: 1000 } });
    welcome().serverClose(1006);
    expect(client.state).toBe('reconnecting');
    const log = record(client, ['disconnected']);
    client.disconnect();
    expect(log).toEqual([['disconnected', { code: 1000, reason: 'client disconnect', willReconnect: false }]]);
  });

  it('1000 over the HTTP fallback (an event stream has no close code)', async () => {
    const client = makeClient({ transport: 'http', EventSource: FakeEventSource as any, fetch: fakeFetch(() => ({ body: [] })).fetch });
    client.join('lobby');
    await vi.advanceTimersByTimeAsync(0);
    FakeEventSource.last().open();
    const log = record(client, ['disconnected']);
    client.disconnect();
    expect(FakeEventSource.last().closed).toBe(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(log).toEqual([['disconnected', { code: 1000, reason: 'client disconnect', willReconnect: false }]]);
  });
});
