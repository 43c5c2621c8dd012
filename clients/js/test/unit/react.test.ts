import { createElement, type ReactElement } from 'react';
import TestRenderer, { act } from 'react-test-renderer';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { RoomcastProvider, useRoom, type UseRoomResult } from '../../src/react.js';
import { FakeWebSocket, msg } from './fakes.js';
import { makeClient } from './helpers.js';

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

type Chat = { chat: { n: number } };

describe('React binding', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('useRoom joins, collects messages and members, publishes, and leaves on unmount', async () => {
    const client = makeClient({ heartbeat: false });
    const ws = FakeWebSocket.last();
    let last: UseRoomResult<Chat> | undefined;
    function Probe(): ReactElement | null {
      last = useRoom<Chat>('lobby', { history: 5 });
      return null;
    }
    let r!: TestRenderer.ReactTestRenderer;
    act(() => {
      r = TestRenderer.create(createElement(RoomcastProvider, { client }, createElement(Probe)));
    });
    expect(last!.state).toBe('connecting');
    expect(last!.roomState).toBe('joining');
    act(() => ws.welcome());
    expect(last!.state).toBe('connected');
    expect(ws.lastOfType('join')).toMatchObject({ room: 'lobby', history: 5 });
    act(() => ws.receive({ type: 'joined', room: 'lobby', offset: 2, epoch: 'e', recovered: false, messages: [msg('lobby', 1), msg('lobby', 2)] }));
    expect(last!.roomState).toBe('joined');
    expect(last!.messages.map((m) => m.offset)).toEqual([1, 2]);
    const pres = ws.lastOfType('presence');
    await act(async () => {
      ws.receive({ type: 'presence', room: 'lobby', id: pres.id, members: [{ user: 'u1', connections: 1 }], count: { users: 1, connections: 1 } });
    });
    expect(last!.members.map((m) => m.user)).toEqual(['u1']);
    act(() => ws.receive({ type: 'member_joined', room: 'lobby', user: 'u2' }));
    expect(last!.members.map((m) => m.user)).toEqual(['u1', 'u2']);
    act(() => ws.receive(msg('lobby', 3)));
    expect(last!.messages.map((m) => m.offset)).toEqual([1, 2, 3]);

    let p!: Promise<unknown>;
    act(() => {
      p = last!.publish('chat', { n: 9 });
    });
    const pub = ws.lastOfType('publish');
    expect(pub).toMatchObject({ room: 'lobby', event: 'chat', data: { n: 9 } });
    ws.receive({ type: 'ack', id: pub.id, offset: 4 });
    await expect(p).resolves.toMatchObject({ offset: 4 });

    act(() => r.unmount());
    expect(ws.lastOfType('leave')).toMatchObject({ room: 'lobby' });
    expect(client.room('lobby')).toBeUndefined();
    client.disconnect();
  });

  it('two components on one room share it and leave only when both unmount', () => {
    const client = makeClient({ heartbeat: false });
    const ws = FakeWebSocket.last();
    act(() => ws.welcome());
    function Probe() {
      useRoom('lobby');
      return null;
    }
    let r1!: TestRenderer.ReactTestRenderer;
    let r2!: TestRenderer.ReactTestRenderer;
    act(() => {
      r1 = TestRenderer.create(createElement(RoomcastProvider, { client }, createElement(Probe)));
      r2 = TestRenderer.create(createElement(RoomcastProvider, { client }, createElement(Probe)));
    });
    expect(ws.ofType('join')).toHaveLength(1);
    act(() => r1.unmount());
    expect(ws.ofType('leave')).toHaveLength(0);
    act(() => r2.unmount());
    expect(ws.ofType('leave')).toHaveLength(1);
    client.disconnect();
  });

  it('replaces its messages with the server history when recovery fails', () => {
    const client = makeClient({ heartbeat: false, reconnect: { baseMs: 10, capMs: 10 } });
    let ws = FakeWebSocket.last();
    let last: UseRoomResult<Chat> | undefined;
    function Probe() {
      last = useRoom<Chat>('lobby', { history: 2 });
      return null;
    }
    act(() => {
      TestRenderer.create(createElement(RoomcastProvider, { client }, createElement(Probe)));
    });
    act(() => ws.welcome());
    act(() => ws.receive({ type: 'joined', room: 'lobby', offset: 2, epoch: 'e', recovered: false, messages: [msg('lobby', 1), msg('lobby', 2)] }));
    act(() => ws.serverClose(1006));
    expect(last!.state).toBe('reconnecting');
    act(() => {
      vi.advanceTimersByTime(10);
    });
    ws = FakeWebSocket.last();
    act(() => ws.welcome());
    act(() => ws.receive({ type: 'joined', room: 'lobby', offset: 90, epoch: 'e', recovered: false, messages: [msg('lobby', 89), msg('lobby', 90)] }));
    expect(last!.messages.map((m) => m.offset)).toEqual([89, 90]);
    client.disconnect();
  });

  it('throws a clear error without a provider', () => {
    function Probe() {
      useRoom('x');
      return null;
    }
    const spy = vi.spyOn(console, 'error').mockImplementation(() => {});
    expect(() => act(() => void TestRenderer.create(createElement(Probe)))).toThrow(/RoomcastProvider/);
    spy.mockRestore();
  });
});
