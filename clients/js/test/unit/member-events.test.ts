import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeWebSocket } from './fakes.js';
import { makeClient, record } from './helpers.js';

describe('member events', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('memberEvents: false asks the server for none, on the first join and on every re-join', () => {
    const client = makeClient({ reconnect: { baseMs: 10, capMs: 10 } });
    client.join('big', { memberEvents: false });
    client.join('small');
    let ws = FakeWebSocket.last();
    ws.welcome();
    const joins = () => Object.fromEntries(ws.ofType('join').map((j) => [j.room, j.member_events]));
    expect(joins()).toEqual({ big: false, small: undefined });
    ws.receive({ type: 'joined', room: 'big', offset: 0, epoch: 'e', recovered: false, messages: [] });
    ws.serverClose(1006);
    vi.advanceTimersByTime(10);
    ws = FakeWebSocket.last();
    ws.welcome();
    expect(joins().big).toBe(false);
    client.disconnect();
  });

  it('member_count is a room event and the room keeps the last one', () => {
    const client = makeClient();
    const room = client.join('big');
    const other = client.join('other');
    const ws = FakeWebSocket.last();
    ws.welcome();
    const log = record(room, ['member_count']);
    const otherLog = record(other, ['member_count']);
    expect(room.memberCount).toBeUndefined();
    ws.receive({ type: 'member_count', room: 'big', users: 1200, connections: 1300 });
    ws.receive({ type: 'member_count', room: 'big', users: 1201, connections: 1302 });
    expect(log.map((e) => e[1])).toEqual([
      { room: 'big', users: 1200, connections: 1300 },
      { room: 'big', users: 1201, connections: 1302 },
    ]);
    expect(room.memberCount).toEqual({ room: 'big', users: 1201, connections: 1302 });
    expect(otherLog).toHaveLength(0);
    client.disconnect();
  });
});
