import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeWebSocket, msg } from './fakes.js';
import { makeClient, record } from './helpers.js';

type Chat = { chat: { n: number }; typing: { who: string } };

describe('rooms', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('joins after the welcome, with history, and delivers the history in order', () => {
    const client = makeClient();
    const room = client.join<Chat>('lobby', { history: 50 });
    const ws = FakeWebSocket.last();
    expect(ws.sent).toHaveLength(0); // nothing before the welcome
    ws.welcome();
    const join = ws.lastOfType('join');
    expect(join).toMatchObject({ type: 'join', room: 'lobby', history: 50 });
    expect(join.since).toBeUndefined();
    const got: number[] = [];
    room.onEvent('chat', (data) => got.push(data.n));
    ws.receive({ type: 'joined', room: 'lobby', offset: 3, epoch: 'e1', recovered: false, messages: [msg('lobby', 1), msg('lobby', 2), msg('lobby', 3)] });
    expect(room.state).toBe('joined');
    expect(got).toEqual([1, 2, 3]);
    expect(room.position).toEqual({ offset: 3, epoch: 'e1' });
    client.disconnect();
  });

  it('drops messages whose offset is <= the last seen', () => {
    const client = makeClient();
    const room = client.join('lobby');
    const ws = FakeWebSocket.last();
    ws.welcome();
    ws.receive({ type: 'joined', room: 'lobby', offset: 0, epoch: 'e1', recovered: false, messages: [] });
    const got: (number | undefined)[] = [];
    room.on('message', (m) => got.push(m.offset));
    for (const o of [1, 2, 2, 1, 3, 3, 4, 2, 5]) ws.receive(msg('lobby', o));
    ws.receive(msg('lobby', undefined, 'typing')); // volatile: no offset, always delivered
    expect(got).toEqual([1, 2, 3, 4, 5, undefined]); // (a gap above the last is in gap.test.ts)
    client.disconnect();
  });

  it('buffers messages that arrive before joined and merges them with the history in offset order', () => {
    const client = makeClient();
    const room = client.join('lobby', { history: 10 });
    const ws = FakeWebSocket.last();
    ws.welcome();
    const got: number[] = [];
    room.on('message', (m) => got.push(m.offset!));
    ws.receive(msg('lobby', 5));
    ws.receive(msg('lobby', 4));
    ws.receive({ type: 'joined', room: 'lobby', offset: 4, epoch: 'e1', recovered: false, messages: [msg('lobby', 3), msg('lobby', 4)] });
    expect(got).toEqual([3, 4, 5]);
    client.disconnect();
  });

  it('re-joins every room with since = last offset/epoch and delivers the missed messages in order', () => {
    const client = makeClient({ reconnect: { baseMs: 10, capMs: 10 } });
    const a = client.join<Chat>('a');
    const b = client.join<Chat>('b');
    let ws = FakeWebSocket.last();
    ws.welcome();
    ws.receive({ type: 'joined', room: 'a', offset: 5, epoch: 'ea', recovered: false, messages: [] });
    ws.receive({ type: 'joined', room: 'b', offset: 0, epoch: 'eb', recovered: false, messages: [] });
    ws.receive(msg('a', 6));
    const got: string[] = [];
    a.on('message', (m) => got.push(`a${m.offset}`));
    b.on('message', (m) => got.push(`b${m.offset}`));
    const failed = vi.fn();
    a.on('recovery_failed', failed);
    b.on('recovery_failed', failed);

    ws.serverClose(1006);
    expect(a.state).toBe('joining');
    vi.advanceTimersByTime(10);
    ws = FakeWebSocket.last();
    ws.welcome();
    const joins = ws.ofType('join');
    expect(joins.map((j) => [j.room, j.since])).toEqual([
      ['a', { offset: 6, epoch: 'ea' }],
      ['b', { offset: 0, epoch: 'eb' }],
    ]);
    ws.receive({ type: 'joined', room: 'a', offset: 9, epoch: 'ea', recovered: true, messages: [msg('a', 6), msg('a', 7), msg('a', 8), msg('a', 9)] });
    ws.receive({ type: 'joined', room: 'b', offset: 1, epoch: 'eb', recovered: true, messages: [msg('b', 1)] });
    expect(got).toEqual(['a7', 'a8', 'a9', 'b1']);
    expect(failed).not.toHaveBeenCalled();
    client.disconnect();
  });

  it('emits recovery_failed when the server could not recover, with the recent history to reload from', () => {
    const client = makeClient({ reconnect: { baseMs: 10, capMs: 10 } });
    const room = client.join('lobby', { history: 2 });
    let ws = FakeWebSocket.last();
    ws.welcome();
    ws.receive({ type: 'joined', room: 'lobby', offset: 10, epoch: 'e1', recovered: false, messages: [msg('lobby', 9), msg('lobby', 10)] });
    const log = record(room, ['recovery_failed', 'joined', 'message']);
    ws.serverClose(4008);
    vi.runOnlyPendingTimers();
    ws = FakeWebSocket.last();
    ws.welcome();
    expect(ws.lastOfType('join')).toMatchObject({ history: 2, since: { offset: 10, epoch: 'e1' } });
    ws.receive({ type: 'joined', room: 'lobby', offset: 500, epoch: 'e1', recovered: false, messages: [msg('lobby', 499), msg('lobby', 500)] });
    expect(log.map((e) => e[0])).toEqual(['message', 'message', 'recovery_failed', 'joined']);
    expect(log[2]![1]).toMatchObject({ room: 'lobby', epoch: 'e1', previousEpoch: 'e1', lastOffset: 10 });
    expect(log[2]![1].messages.map((m: any) => m.offset)).toEqual([499, 500]);
    expect(log[3]![1]).toMatchObject({ recovered: false, wasRecovering: true });
    expect(room.offset).toBe(500);
    client.disconnect();
  });

  it('a new epoch resets the offset floor and counts as a failed recovery', () => {
    const client = makeClient({ reconnect: { baseMs: 10, capMs: 10 } });
    const room = client.join('lobby');
    let ws = FakeWebSocket.last();
    ws.welcome();
    ws.receive({ type: 'joined', room: 'lobby', offset: 100, epoch: 'e1', recovered: false, messages: [] });
    const got: number[] = [];
    room.on('message', (m) => got.push(m.offset!));
    const failed = vi.fn();
    room.on('recovery_failed', failed);
    ws.serverClose(1006);
    vi.runOnlyPendingTimers();
    ws = FakeWebSocket.last();
    ws.welcome();
    ws.receive({ type: 'joined', room: 'lobby', offset: 2, epoch: 'e2', recovered: true, messages: [msg('lobby', 1), msg('lobby', 2)] });
    ws.receive(msg('lobby', 3));
    expect(got).toEqual([1, 2, 3]);
    expect(failed).toHaveBeenCalledOnce();
    expect(failed.mock.calls[0]![0]).toMatchObject({ previousEpoch: 'e1', epoch: 'e2' });
    client.disconnect();
  });

  it('resumes from a position saved in an earlier session', () => {
    const client = makeClient();
    client.join('lobby', { since: { offset: 42, epoch: 'e9' } });
    const ws = FakeWebSocket.last();
    ws.welcome();
    expect(ws.lastOfType('join').since).toEqual({ offset: 42, epoch: 'e9' });
    client.disconnect();
  });

  it('leave stops re-joining and resolves on left', async () => {
    const client = makeClient({ reconnect: { baseMs: 10, capMs: 10 } });
    const room = client.join('lobby');
    let ws = FakeWebSocket.last();
    ws.welcome();
    ws.receive({ type: 'joined', room: 'lobby', offset: 0, epoch: 'e', recovered: false, messages: [] });
    const p = room.leave();
    const leave = ws.lastOfType('leave');
    expect(leave).toMatchObject({ room: 'lobby' });
    ws.receive({ type: 'left', room: 'lobby', id: leave.id });
    await p;
    expect(room.state).toBe('left');
    ws.serverClose(1006);
    vi.runOnlyPendingTimers();
    ws = FakeWebSocket.last();
    ws.welcome();
    expect(ws.ofType('join')).toHaveLength(0);
    client.disconnect();
  });

  it('a join refused by the server marks the room failed', () => {
    const client = makeClient();
    const room = client.join('secret');
    const ws = FakeWebSocket.last();
    ws.welcome();
    const errors: Error[] = [];
    room.on('error', (e) => errors.push(e));
    ws.receive({ type: 'error', code: 'forbidden', message: 'no', id: ws.lastOfType('join').id });
    expect(room.state).toBe('failed');
    expect(errors[0]).toMatchObject({ code: 'forbidden' });
    client.disconnect();
  });

  it('presence is a request/response by id; member events keep members up to date', async () => {
    const client = makeClient();
    const room = client.join('lobby', { presence: true });
    const ws = FakeWebSocket.last();
    ws.welcome();
    ws.receive({ type: 'joined', room: 'lobby', offset: 0, epoch: 'e', recovered: false, messages: [] });
    const pres = ws.lastOfType('presence');
    expect(pres).toMatchObject({ room: 'lobby', id: expect.any(String) });
    const lists: string[][] = [];
    room.on('members', (ms) => lists.push(ms.map((m) => m.user).sort()));
    ws.receive({ type: 'presence', room: 'lobby', id: 'someone-elses', members: [] }); // ignored
    ws.receive({ type: 'presence', room: 'lobby', id: pres.id, members: [{ user: 'u1', connections: 1 }, { user: 'u2', connections: 2 }] });
    await Promise.resolve();
    ws.receive({ type: 'member_joined', room: 'lobby', user: 'u3' });
    ws.receive({ type: 'member_left', room: 'lobby', user: 'u2' });
    expect(lists).toEqual([['u1', 'u2'], ['u1', 'u2', 'u3'], ['u1', 'u3']]);

    const p = client.presence('other', { limit: 5 });
    const req = ws.lastOfType('presence');
    expect(req).toMatchObject({ room: 'other', limit: 5 });
    ws.receive({ type: 'presence', room: 'other', id: req.id, members: [{ user: 'x', connections: 1 }], count: { users: 1, connections: 1 } });
    await expect(p).resolves.toMatchObject({ members: [{ user: 'x', connections: 1 }] });
    client.disconnect();
  });

  it('volatile publishes are fire-and-forget and never queued', () => {
    const client = makeClient();
    const room = client.join<Chat>('lobby');
    const ws = FakeWebSocket.last();
    expect(room.publishVolatile('typing', { who: 'me' })).toBe(false);
    ws.welcome();
    ws.receive({ type: 'joined', room: 'lobby', offset: 0, epoch: 'e', recovered: false, messages: [] });
    expect(room.publishVolatile('typing', { who: 'me' })).toBe(true);
    expect(ws.lastOfType('publish')).toEqual({ type: 'publish', room: 'lobby', event: 'typing', data: { who: 'me' }, volatile: true });
    expect(client.outboxLength).toBe(0);
    client.disconnect();
  });

  it('direct messages are emitted, typed by event', () => {
    const client = makeClient<{ poke: { n: number } }>();
    const ws = FakeWebSocket.last();
    ws.welcome();
    const got: number[] = [];
    client.onDirect('poke', (d) => got.push(d.n));
    const all = vi.fn();
    client.on('direct', all);
    ws.receive({ type: 'direct', from: 'u9', event: 'poke', data: { n: 7 }, ts: 1 });
    expect(got).toEqual([7]);
    expect(all).toHaveBeenCalledOnce();
    client.disconnect();
  });
});

describe('rooms, more', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('ready() resolves at once when already joined', async () => {
    const client = makeClient();
    const room = client.join('lobby');
    const ws = FakeWebSocket.last();
    ws.welcome();
    const first = room.ready();
    ws.receive({ type: 'joined', room: 'lobby', offset: 1, epoch: 'e', recovered: false, messages: [msg('lobby', 1)] });
    await expect(first).resolves.toMatchObject({ offset: 1 });
    await expect(room.ready()).resolves.toMatchObject({ offset: 1, epoch: 'e' });
    client.disconnect();
  });

  it('a second welcome on one connection (an auth reply) does not re-join', () => {
    const client = makeClient();
    client.join('lobby');
    const ws = FakeWebSocket.last();
    ws.welcome();
    ws.welcome();
    expect(ws.ofType('join')).toHaveLength(1);
    client.disconnect();
  });
});
