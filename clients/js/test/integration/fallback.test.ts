// The SSE + HTTP fallback over real sockets on loopback: a client that only uses
// GET /sse and POST /client/commands chats with a WebSocket client, and resumes with since.
// Against test/e2e/mock-node.mjs always, and a real node when ROOMCAST_TEST_URL is set.
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoomcastClient, type ClientOptions, type EventSourceCtor, type WebSocketCtor } from '../../src/index.js';
// @ts-expect-error: a plain ES module without types
import { startMockNode } from '../e2e/mock-node.mjs';
import { NodeEventSource } from './node-eventsource.js';

let mock: { port: number; close(): void };
beforeAll(async () => {
  mock = await startMockNode(0);
});
afterAll(() => mock.close());

function within<T>(fn: (resolve: (v: T) => void) => void, ms = 5000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timed out')), ms);
    fn((v) => {
      clearTimeout(t);
      resolve(v);
    });
  });
}

type Chat = { chat: { text: string } };
const targets: [string, () => string][] = [['mock node', () => `ws://127.0.0.1:${mock.port}/ws`]];
if (process.env.ROOMCAST_TEST_URL) targets.push(['real node', () => process.env.ROOMCAST_TEST_URL!]);

describe.each(targets)('HTTP fallback against the %s', (_name, url) => {
  const ws = (o: Partial<ClientOptions> = {}) =>
    new RoomcastClient({ url: url(), WebSocket: WebSocket as unknown as WebSocketCtor, network: false, ...o });
  const http = () =>
    new RoomcastClient({
      url: url(),
      transport: 'http',
      EventSource: NodeEventSource as unknown as EventSourceCtor,
      network: false,
      reconnect: { baseMs: 50, capMs: 200 },
    });

  it('receives over SSE, sends over HTTP, and resumes from since after a reconnect', async () => {
    const name = `fb-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
    const w = ws();
    const h = http();
    try {
      const rw = w.join<Chat>(name);
      const rh = h.join<Chat>(name);
      await Promise.all([rw.ready(), rh.ready()]);
      expect(h.transportKind).toBe('http');
      expect(h.state).toBe('connected');

      const seenH: string[] = [];
      rh.on('message', (m) => seenH.push(m.data.text));
      const seenW: string[] = [];
      rw.on('message', (m) => seenW.push(m.data.text));

      const gotH = within<void>((resolve) => rh.onEvent('chat', () => resolve()));
      await rw.publish('chat', { text: 'from ws' });
      await gotH;
      expect(seenH).toEqual(['from ws']);

      const gotW = within<void>((resolve) => rw.onEvent('chat', () => resolve()));
      const ack = await rh.publish('chat', { text: 'from http' });
      expect(ack.offset).toBeGreaterThan(0);
      await gotW;
      expect(seenW).toEqual(['from http']);

      const p = await h.presence(name);
      expect(Array.isArray(p.members)).toBe(true);

      h.disconnect();
      await rw.publish('chat', { text: 'missed 1' });
      await rw.publish('chat', { text: 'missed 2' });
      const caughtUp = within<void>((resolve) => rh.on('message', (m) => m.data.text === 'missed 2' && resolve()));
      h.connect();
      await caughtUp;
      // 'from http' arrives too (the sender's own message over its stream, unless the node filters it)
      expect(seenH.filter((t) => t !== 'from http')).toEqual(['from ws', 'missed 1', 'missed 2']);
    } finally {
      w.disconnect();
      h.disconnect();
    }
  });
});
