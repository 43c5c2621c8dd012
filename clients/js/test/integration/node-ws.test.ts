// The client in Node with the `ws` package, against test/e2e/mock-node.mjs on loopback:
// checks the real WebSocket path (subprotocol, text frames, close) that the unit tests fake.
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoomcastClient, type WebSocketCtor } from '../../src/index.js';
// @ts-expect-error: a plain ES module without types
import { startMockNode } from '../e2e/mock-node.mjs';

let node: { port: number; close(): void };
beforeAll(async () => {
  node = await startMockNode(0);
});
afterAll(() => node.close());

function once<T>(fn: (resolve: (v: T) => void) => void, ms = 5000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timed out')), ms);
    fn((v) => {
      clearTimeout(t);
      resolve(v);
    });
  });
}

describe('Node + ws against a loopback node', () => {
  it('connects, joins with history, publishes with ack and echo, and sees the other client', async () => {
    const url = `ws://127.0.0.1:${node.port}/ws`;
    const a = new RoomcastClient({ url, WebSocket: WebSocket as unknown as WebSocketCtor, network: false });
    const b = new RoomcastClient({ url, WebSocket: WebSocket as unknown as WebSocketCtor, network: false });
    try {
      const ra = a.join<{ chat: { text: string } }>('it-room', { history: 10, presence: true });
      await ra.ready();
      expect(a.state).toBe('connected');
      expect(a.welcome?.auth).toBe('none');
      const ack = await ra.publish('chat', { text: 'first' }, { echo: true });
      expect(ack.offset).toBe(1);

      const rb = b.join<{ chat: { text: string } }>('it-room', { history: 10 });
      const joined = await rb.ready();
      expect(joined.messages.map((m) => m.data.text)).toEqual(['first']);

      const got = once<string>((resolve) => rb.onEvent('chat', (d) => resolve(d.text)));
      await ra.publish('chat', { text: 'second' });
      expect(await got).toBe('second');

      const members = await once<string[]>((resolve) => {
        if (ra.members.length >= 2) resolve(ra.members.map((m) => m.user));
        ra.on('members', (ms) => ms.length >= 2 && resolve(ms.map((m) => m.user)));
      });
      expect(members).toHaveLength(2);
      await a.ping();
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });
});
