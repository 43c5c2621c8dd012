import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeEventSource, FakeWebSocket, fakeFetch, msg } from './fakes.js';
import { makeClient, record } from './helpers.js';

// A live message whose offset skips ahead of the last one delivered: the client re-joins the
// room with `since` and delivers the replay and the held-back messages in offset order.
describe('gap in live offsets', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  function joinedRoom() {
    const client = makeClient();
    const room = client.join('lobby', { history: 10 });
    const ws = FakeWebSocket.last();
    ws.welcome();
    ws.receive({ type: 'joined', room: 'lobby', offset: 2, epoch: 'e1', recovered: false, messages: [] });
    const got: (number | undefined)[] = [];
    room.on('message', (m) => got.push(m.offset));
    return { client, room, ws, got };
  }

  it('re-joins with since = the last delivered offset and epoch, tells the app, and fills the gap in order', () => {
    const { client, room, ws, got } = joinedRoom();
    const log = record(room, ['gap', 'joined', 'recovery_failed']);
    ws.receive(msg('lobby', 3));
    expect(ws.ofType('join')).toHaveLength(1);
    ws.receive(msg('lobby', 6)); // 4 and 5 never came
    expect(got).toEqual([3]); // 6 is held back
    expect(room.state).toBe('joining');
    expect(log).toEqual([['gap', { room: 'lobby', epoch: 'e1', lastOffset: 3, offset: 6 }]]);
    const rejoin = ws.lastOfType('join');
    expect(ws.ofType('join')).toHaveLength(2);
    expect(rejoin).toMatchObject({ type: 'join', room: 'lobby', since: { offset: 3, epoch: 'e1' } });
    ws.receive(msg('lobby', 7)); // live, while the re-join is answered
    ws.receive({
      type: 'joined',
      room: 'lobby',
      id: rejoin.id,
      offset: 6,
      epoch: 'e1',
      recovered: true,
      messages: [msg('lobby', 4), msg('lobby', 5), msg('lobby', 6)],
    });
    ws.receive(msg('lobby', 8));
    expect(got).toEqual([3, 4, 5, 6, 7, 8]);
    expect(room.state).toBe('joined');
    expect(room.position).toEqual({ offset: 8, epoch: 'e1' });
    expect(log.map((e) => e[0])).toEqual(['gap', 'joined']);
    expect(log[1]![1]).toMatchObject({ recovered: true, wasRecovering: true });
    client.disconnect();
  });

  it('says so when the server cannot replay the gap (recovery_failed), and goes on from the new position', () => {
    const { client, room, ws, got } = joinedRoom();
    const failed = record(room, ['recovery_failed']);
    ws.receive(msg('lobby', 9));
    const rejoin = ws.lastOfType('join');
    expect(rejoin.since).toEqual({ offset: 2, epoch: 'e1' });
    ws.receive({ type: 'joined', room: 'lobby', id: rejoin.id, offset: 9, epoch: 'e1', recovered: false, messages: [msg('lobby', 8), msg('lobby', 9)] });
    expect(failed).toHaveLength(1);
    expect(failed[0]![1]).toMatchObject({ room: 'lobby', lastOffset: 2 });
    ws.receive(msg('lobby', 10));
    expect(got).toEqual([8, 9, 10]);
    expect(ws.ofType('join')).toHaveLength(2); // no further re-join
    client.disconnect();
  });

  it('consecutive, duplicate and volatile messages do not count as a gap', () => {
    const { client, ws, got } = joinedRoom();
    const gap = vi.fn();
    client.room('lobby')!.on('gap', gap);
    for (const o of [3, 3, 2, 4, undefined, 5]) ws.receive(msg('lobby', o));
    expect(got).toEqual([3, 4, undefined, 5]);
    expect(gap).not.toHaveBeenCalled();
    expect(ws.ofType('join')).toHaveLength(1);
    client.disconnect();
  });

  it("our own publishes without echo (never sent back) are not a gap, even when their ack comes after the next message", async () => {
    const { client, room, ws, got } = joinedRoom();
    const gap = vi.fn();
    room.on('gap', gap);
    const p1 = room.publish('chat', { n: 3 });
    await vi.advanceTimersByTimeAsync(0);
    ws.receive({ type: 'ack', id: ws.lastOfType('publish').id, offset: 3 });
    await expect(p1).resolves.toMatchObject({ offset: 3 });
    ws.receive(msg('lobby', 4)); // 3 was ours
    const p2 = room.publish('chat', { n: 5 });
    await vi.advanceTimersByTimeAsync(0);
    ws.receive(msg('lobby', 6)); // before the ack of 5: held back, not a gap yet
    expect(got).toEqual([4]);
    ws.receive(msg('lobby', 7));
    ws.receive({ type: 'ack', id: ws.lastOfType('publish').id, offset: 5 });
    await expect(p2).resolves.toMatchObject({ offset: 5 });
    expect(got).toEqual([4, 6, 7]);
    expect(gap).not.toHaveBeenCalled();
    expect(ws.ofType('join')).toHaveLength(1);
    client.disconnect();
  });

  it('a held message is a gap after all when our publish fails', async () => {
    const { client, room, ws, got } = joinedRoom();
    const gap = vi.fn();
    room.on('gap', gap);
    const p = room.publish('chat', { n: 0 });
    await vi.advanceTimersByTimeAsync(0);
    ws.receive(msg('lobby', 5));
    expect(gap).not.toHaveBeenCalled();
    ws.receive({ type: 'error', code: 'rate_limited', message: 'slow down', id: ws.lastOfType('publish').id });
    await expect(p).rejects.toMatchObject({ code: 'rate_limited' });
    expect(gap).toHaveBeenCalledWith({ room: 'lobby', epoch: 'e1', lastOffset: 2, offset: 5 });
    expect(ws.lastOfType('join').since).toEqual({ offset: 2, epoch: 'e1' });
    expect(got).toEqual([]);
    client.disconnect();
  });

  it('a replay after a re-join does not deliver our own publishes (they were not delivered live either)', async () => {
    const { client, room, ws, got } = joinedRoom();
    const p = room.publish('chat', { n: 3 });
    await vi.advanceTimersByTimeAsync(0);
    ws.receive({ type: 'ack', id: ws.lastOfType('publish').id, offset: 3 });
    await p;
    ws.receive(msg('lobby', 6)); // 4 and 5 missing
    const rejoin = ws.lastOfType('join');
    expect(rejoin.since).toEqual({ offset: 2, epoch: 'e1' });
    ws.receive({
      type: 'joined',
      room: 'lobby',
      id: rejoin.id,
      offset: 6,
      epoch: 'e1',
      recovered: true,
      messages: [msg('lobby', 3), msg('lobby', 4), msg('lobby', 5), msg('lobby', 6)],
    });
    expect(got).toEqual([4, 5, 6]);
    expect(room.position).toEqual({ offset: 6, epoch: 'e1' });
    client.disconnect();
  });

  it('a room left in the gap handler is not re-joined', () => {
    const { client, room, ws } = joinedRoom();
    room.on('gap', () => void room.leave());
    ws.receive(msg('lobby', 5));
    expect(room.state).toBe('left');
    expect(ws.ofType('join')).toHaveLength(1);
    client.disconnect();
  });

  it('over the HTTP fallback the event stream is reopened with since = the last delivered offset', async () => {
    const client = makeClient({
      transport: 'http',
      EventSource: FakeEventSource as any,
      fetch: fakeFetch(() => ({ body: [] })).fetch,
    });
    const room = client.join('lobby');
    await vi.advanceTimersByTimeAsync(0);
    let es = FakeEventSource.last();
    es.open();
    const got: number[] = [];
    room.on('message', (m) => got.push(m.offset!));
    const gap = vi.fn();
    room.on('gap', gap);
    es.emitMessage(msg('lobby', 4)); // the first of a fresh stream: anything goes
    es.emitMessage(msg('lobby', 5));
    es.emitMessage(msg('lobby', 8));
    expect(gap).toHaveBeenCalledWith({ room: 'lobby', lastOffset: 5, offset: 8, epoch: 0 });
    await vi.advanceTimersByTimeAsync(0);
    expect(FakeEventSource.instances).toHaveLength(2);
    es = FakeEventSource.last();
    expect(es.query.get('since')).toBe('lobby:5');
    es.open();
    for (const o of [6, 7, 8, 9]) es.emitMessage(msg('lobby', o));
    expect(got).toEqual([4, 5, 6, 7, 8, 9]);
    client.disconnect();
  });
});
