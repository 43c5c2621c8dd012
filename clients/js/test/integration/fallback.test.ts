// The SSE + HTTP fallback over real sockets on loopback: a client that only uses
// GET /sse and POST /client/commands chats with a WebSocket client, and resumes with since.
// Against test/e2e/mock-node.mjs always, and a real node when ROOMCAST_TEST_URL is set.
import WebSocket from 'ws';
import { describe, expect, it } from 'vitest';
import { RoomcastClient, type ClientOptions, type EventSourceCtor, type WebSocketCtor } from '../../src/index.js';
import { roomName, targets, within } from './targets.js';
import { NodeEventSource } from './node-eventsource.js';

type Chat = { chat: { text: string } };

describe.each(targets())('HTTP fallback against the %s', (_name, url) => {
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
    const name = roomName('fb');
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
