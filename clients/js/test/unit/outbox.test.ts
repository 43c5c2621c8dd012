import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { RoomcastError } from '../../src/index.js';
import { FakeWebSocket } from './fakes.js';
import { makeClient } from './helpers.js';

function joined(ws: FakeWebSocket, room: string, offset = 0) {
  ws.receive({ type: 'joined', room, offset, epoch: 'e', recovered: offset > 0, messages: [] });
}

describe('publish, acks and the outbox', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('publish resolves with the ack matched by id', async () => {
    const client = makeClient();
    const room = client.join('lobby');
    const ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    const p1 = room.publish('chat', { text: 'a' }, { echo: true });
    const p2 = room.publish('chat', { text: 'b' });
    const [c1, c2] = ws.ofType('publish');
    expect(c1).toMatchObject({ room: 'lobby', event: 'chat', data: { text: 'a' }, echo: true });
    expect(c1.id).not.toBe(c2.id);
    ws.receive({ type: 'ack', id: c2.id, offset: 8 });
    ws.receive({ type: 'ack', id: c1.id, offset: 7 });
    await expect(p1).resolves.toEqual({ id: c1.id, offset: 7 });
    await expect(p2).resolves.toEqual({ id: c2.id, offset: 8 });
    expect(client.outboxLength).toBe(0);
    client.disconnect();
  });

  it('an error reply with the id rejects with its code', async () => {
    const client = makeClient();
    const room = client.join('lobby');
    const ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    const p = room.publish('chat', {});
    ws.receive({ type: 'error', code: 'rate_limited', message: 'slow down', id: ws.lastOfType('publish').id });
    await expect(p).rejects.toMatchObject({ name: 'RoomcastError', code: 'rate_limited', message: 'slow down' });
    client.disconnect();
  });

  it('rejects with timeout when no ack comes within ackTimeoutMs', async () => {
    const client = makeClient({ ackTimeoutMs: 3000, heartbeat: false });
    const room = client.join('lobby');
    const ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    const p = room.publish('chat', {});
    const settled = vi.fn();
    p.catch(settled);
    await vi.advanceTimersByTimeAsync(2999);
    expect(settled).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1);
    await expect(p).rejects.toBeInstanceOf(RoomcastError);
    await expect(p).rejects.toMatchObject({ code: 'timeout' });
    expect(client.outboxLength).toBe(0);
    // a late ack is ignored
    ws.receive({ type: 'ack', id: ws.lastOfType('publish').id, offset: 1 });
    const t = expect(room.publish('chat', {}, { timeoutMs: 50 })).rejects.toMatchObject({ code: 'timeout' });
    await vi.advanceTimersByTimeAsync(50);
    await t;
    client.disconnect();
  });

  it('keeps unacknowledged messages across a reconnect and resends them with the same ids after re-joining', async () => {
    const client = makeClient({ reconnect: { baseMs: 100, capMs: 100 } });
    const room = client.join('lobby');
    let ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby', 3);
    const p1 = room.publish('chat', { n: 1 });
    const p2 = room.publish('chat', { n: 2 });
    const s1 = client.send('u7', 'poke', { n: 3 });
    const firstIds = [...ws.ofType('publish'), ...ws.ofType('send')].map((m) => m.id);
    expect(firstIds).toHaveLength(3);
    ws.receive({ type: 'ack', id: firstIds[0], offset: 4 });
    await expect(p1).resolves.toMatchObject({ offset: 4 });

    ws.serverClose(1006); // acks of #2 and the send are lost
    expect(client.outboxLength).toBe(2);
    const p3 = room.publish('chat', { n: 4 }); // made while disconnected
    expect(client.outboxLength).toBe(3);
    await vi.advanceTimersByTimeAsync(100);
    ws = FakeWebSocket.last();
    ws.welcome();
    // direct sends go at once; room publishes wait for the room's joined
    expect(ws.sent.map((m) => m.type)).toEqual(['join', 'send']);
    expect(ws.lastOfType('send').id).toBe(firstIds[2]);
    joined(ws, 'lobby', 5);
    const resent = ws.ofType('publish');
    expect(resent.map((m) => m.data.n)).toEqual([2, 4]);
    expect(resent[0].id).toBe(firstIds[1]);
    // the server deduplicates by id and answers with the original ack
    ws.receive({ type: 'ack', id: resent[0].id, offset: 5 });
    ws.receive({ type: 'ack', id: resent[1].id, offset: 6 });
    ws.receive({ type: 'ack', id: firstIds[2] });
    await expect(p2).resolves.toEqual({ id: firstIds[1], offset: 5 });
    await expect(p3).resolves.toMatchObject({ offset: 6 });
    await expect(s1).resolves.toBeUndefined();
    expect(client.outboxLength).toBe(0);
    client.disconnect();
  });

  it('the ack timeout does not run while disconnected, and restarts on resend', async () => {
    const client = makeClient({ reconnect: { baseMs: 20_000, capMs: 20_000 }, ackTimeoutMs: 5000, heartbeat: false });
    const room = client.join('lobby');
    let ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    const p = room.publish('chat', {});
    const rejected = vi.fn();
    p.catch(rejected);
    await vi.advanceTimersByTimeAsync(4000);
    ws.serverClose(1006);
    await vi.advanceTimersByTimeAsync(10_000); // 10 s offline: longer than the ack timeout
    expect(rejected).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(10_000);
    ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    expect(ws.ofType('publish')).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(5000);
    expect(rejected).toHaveBeenCalledOnce();
    client.disconnect();
  });

  it('does not resend a message first sent longer ago than outboxMaxAgeMs (dedupe window)', async () => {
    const client = makeClient({ reconnect: { baseMs: 200_000, capMs: 200_000 }, outboxMaxAgeMs: 100_000, heartbeat: false });
    const room = client.join('lobby');
    let ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    const p = room.publish('chat', {});
    p.catch(() => {});
    ws.serverClose(1006);
    await vi.advanceTimersByTimeAsync(200_000);
    ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    await expect(p).rejects.toMatchObject({ code: 'outbox_expired' });
    expect(ws.ofType('publish')).toHaveLength(0);
    client.disconnect();
  });

  it('is bounded: over outboxSize publishes are refused', async () => {
    const client = makeClient({ outboxSize: 2 });
    const room = client.join('lobby');
    const a = room.publish('chat', 1);
    const b = room.publish('chat', 2);
    await expect(room.publish('chat', 3)).rejects.toMatchObject({ code: 'outbox_full' });
    await expect(client.send('u', 'x', 1)).rejects.toMatchObject({ code: 'outbox_full' });
    expect(client.outboxLength).toBe(2);
    const ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    for (const m of ws.ofType('publish')) ws.receive({ type: 'ack', id: m.id, offset: m.data });
    await expect(Promise.all([a, b])).resolves.toHaveLength(2);
    client.disconnect();
  });

  it('rejects what is pending when the client gives up or disconnects', async () => {
    const client = makeClient({ reconnect: false });
    const room = client.join('lobby');
    const ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    const p = room.publish('chat', 1);
    const pres = client.presence('lobby');
    ws.serverClose(1011);
    await expect(pres).rejects.toMatchObject({ code: 'disconnected' });
    await expect(p).rejects.toMatchObject({ code: 'closed' });
  });

  it('presence and pings need a connection', async () => {
    const client = makeClient();
    await expect(client.presence('lobby')).rejects.toMatchObject({ code: 'not_connected' });
    const ws = FakeWebSocket.last();
    ws.welcome();
    const ping = client.ping();
    ws.receive({ type: 'pong', id: ws.lastOfType('ping').id });
    await expect(ping).resolves.toBeUndefined();
    client.disconnect();
  });

  it('generates unique ids', () => {
    const client = makeClient();
    const room = client.join('lobby');
    for (let i = 0; i < 500; i++) room.publish('chat', i).catch(() => {});
    const ws = FakeWebSocket.last();
    ws.welcome();
    joined(ws, 'lobby');
    const ids = ws.ofType('publish').map((m) => m.id);
    expect(ids).toHaveLength(500);
    expect(new Set(ids).size).toBe(500);
    client.disconnect();
  });
});
