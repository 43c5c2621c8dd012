import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { httpBaseFromWsUrl } from '../../src/client.js';
import { FakeEventSource, FakeWebSocket, fakeFetch, msg } from './fakes.js';
import { makeClient, record } from './helpers.js';

describe('HTTP fallback (SSE + POST /client/commands)', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('derives the HTTP base from the WebSocket URL', () => {
    expect(httpBaseFromWsUrl('wss://example.com/ws')).toBe('https://example.com');
    expect(httpBaseFromWsUrl('ws://127.0.0.1:8080/ws?x=1')).toBe('http://127.0.0.1:8080');
    expect(httpBaseFromWsUrl('wss://example.com/rt/ws')).toBe('https://example.com/rt');
  });

  it('falls back after fallbackAfter WebSocket failures and keeps the same API', async () => {
    const ack = fakeFetch((cmds) => ({
      body: cmds.map((c) =>
        c.type === 'publish' ? { type: 'ack', id: c.id, offset: 11 } : { type: 'presence', id: c.id, room: c.room, members: [] },
      ),
    }));
    const client = makeClient({
      token: 'jwt1',
      EventSource: FakeEventSource as any,
      fetch: ack.fetch,
      fallbackAfter: 2,
      reconnect: { baseMs: 10, capMs: 10 },
    });
    const log = record(client, ['transport', 'connected']);
    const room = client.join('lobby');
    FakeWebSocket.last().fail();
    await vi.advanceTimersByTimeAsync(10);
    FakeWebSocket.last().fail();
    expect(log).toEqual([['transport', 'http']]);
    expect(client.transportKind).toBe('http');
    await vi.advanceTimersByTimeAsync(10);
    expect(FakeWebSocket.instances).toHaveLength(2);
    const es = FakeEventSource.last();
    expect(es.url.startsWith('http://127.0.0.1:9/sse?')).toBe(true);
    expect(es.query.get('rooms')).toBe('lobby');
    expect(es.query.get('token')).toBe('jwt1');
    expect(es.query.get('since')).toBeNull();
    es.open();
    expect(client.state).toBe('connected');
    expect(room.state).toBe('joined');
    const got: number[] = [];
    room.on('message', (m) => got.push(m.offset!));
    es.emitMessage(msg('lobby', 10));
    es.emitMessage(msg('lobby', 10));
    expect(got).toEqual([10]);

    const p = room.publish('chat', { text: 'hi' });
    await vi.advanceTimersByTimeAsync(0);
    expect(ack.calls).toHaveLength(1);
    expect(ack.calls[0]!.url).toBe('http://127.0.0.1:9/client/commands');
    expect(ack.calls[0]!.headers.authorization).toBe('Bearer jwt1');
    expect(ack.calls[0]!.body).toEqual([{ type: 'publish', room: 'lobby', event: 'chat', data: { text: 'hi' }, id: expect.any(String) }]);
    await expect(p).resolves.toMatchObject({ offset: 11 });
    await expect(client.presence('lobby')).resolves.toMatchObject({ members: [] });
    client.disconnect();
    expect(es.closed).toBe(true);
  });

  it('joining another room reopens the stream with every room and its since position', async () => {
    const f = fakeFetch(() => ({ body: [] }));
    const client = makeClient({ transport: 'http', EventSource: FakeEventSource as any, fetch: f.fetch });
    const a = client.join('a');
    await vi.advanceTimersByTimeAsync(0);
    expect(FakeWebSocket.instances).toHaveLength(0);
    let es = FakeEventSource.last();
    es.open();
    es.emitMessage(msg('a', 4));
    const b = client.join('b');
    expect(b.state).toBe('joining');
    await vi.advanceTimersByTimeAsync(0);
    expect(es.closed).toBe(true);
    es = FakeEventSource.last();
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(es.query.get('rooms')).toBe('a,b');
    expect(es.query.get('since')).toBe('a:4');
    es.open();
    expect(b.state).toBe('joined');
    expect(a.state).toBe('joined');
    await b.leave();
    await vi.advanceTimersByTimeAsync(0);
    expect(FakeEventSource.last().query.get('rooms')).toBe('a');
    client.disconnect();
  });

  it('reconnects the stream with since after an error, and resends the outbox', async () => {
    let up = false;
    const calls: any[] = [];
    const fetch = async (_url: string, init: { body: string }) => {
      const cmds = JSON.parse(init.body);
      calls.push(cmds);
      if (!up) throw new TypeError('network down');
      return { ok: true, status: 200, text: async () => JSON.stringify(cmds.map((c: any) => ({ type: 'ack', id: c.id, offset: 6 }))) };
    };
    const client = makeClient({ transport: 'http', EventSource: FakeEventSource as any, fetch, reconnect: { baseMs: 100, capMs: 100 } });
    const room = client.join('a');
    await vi.advanceTimersByTimeAsync(0);
    FakeEventSource.last().open();
    FakeEventSource.last().emitMessage(msg('a', 5));
    const p = room.publish('chat', 1);
    await vi.advanceTimersByTimeAsync(0);
    expect(calls).toHaveLength(1);
    expect(client.state).toBe('reconnecting');
    up = true;
    await vi.advanceTimersByTimeAsync(100);
    const es = FakeEventSource.last();
    expect(es.query.get('since')).toBe('a:5');
    es.open();
    await vi.advanceTimersByTimeAsync(0);
    expect(calls).toHaveLength(2);
    expect(calls[1][0].id).toBe(calls[0][0].id);
    await expect(p).resolves.toMatchObject({ offset: 6 });

    es.error();
    expect(client.state).toBe('reconnecting');
    client.disconnect();
  });

  it('HTTP errors reject the batch with the server error code', async () => {
    const f = fakeFetch(() => ({ status: 429, body: { error: { code: 'rate_limited', message: 'too fast' } } }));
    const client = makeClient({ transport: 'http', EventSource: FakeEventSource as any, fetch: f.fetch });
    const room = client.join('a');
    await vi.advanceTimersByTimeAsync(0);
    FakeEventSource.last().open();
    const p = room.publish('chat', 1);
    const e = expect(p).rejects.toMatchObject({ code: 'rate_limited', message: 'too fast' });
    await vi.advanceTimersByTimeAsync(0);
    await e;
    client.disconnect();
  });

  it('a smaller offset first on a resumed stream means the room history was lost', async () => {
    const f = fakeFetch(() => ({ body: [] }));
    const client = makeClient({ transport: 'http', EventSource: FakeEventSource as any, fetch: f.fetch, reconnect: { baseMs: 10, capMs: 10 } });
    const room = client.join('a');
    await vi.advanceTimersByTimeAsync(0);
    FakeEventSource.last().open();
    FakeEventSource.last().emitMessage(msg('a', 50));
    FakeEventSource.last().error();
    await vi.advanceTimersByTimeAsync(10);
    const failed = vi.fn();
    room.on('recovery_failed', failed);
    const got: number[] = [];
    room.on('message', (m) => got.push(m.offset!));
    FakeEventSource.last().open();
    FakeEventSource.last().emitMessage(msg('a', 1));
    FakeEventSource.last().emitMessage(msg('a', 1));
    FakeEventSource.last().emitMessage(msg('a', 2));
    expect(failed).toHaveBeenCalledOnce();
    expect(got).toEqual([1, 2]);
    client.disconnect();
  });

  it('does not fall back once a WebSocket connection has worked', async () => {
    const f = fakeFetch(() => ({ body: [] }));
    const client = makeClient({ EventSource: FakeEventSource as any, fetch: f.fetch, fallbackAfter: 1, reconnect: { baseMs: 10, capMs: 10 } });
    FakeWebSocket.last().welcome();
    for (let i = 0; i < 3; i++) {
      FakeWebSocket.last().fail();
      await vi.advanceTimersByTimeAsync(10);
    }
    expect(client.transportKind).toBe('websocket');
    expect(FakeEventSource.instances).toHaveLength(0);
    client.disconnect();
  });
});
