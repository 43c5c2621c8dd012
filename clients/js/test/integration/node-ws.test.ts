// The client in Node with the `ws` package over real sockets on loopback: against
// test/e2e/mock-node.mjs always, and against a real node too when ROOMCAST_TEST_URL is set
// (e.g. ws://127.0.0.1:8080/ws of `roomcast --auth none`). Checks the real WebSocket path
// (subprotocol, text frames, close) that the unit tests fake, and the recovery flow.
import WebSocket from 'ws';
import { describe, expect, it } from 'vitest';
import { RoomcastClient, type ClientOptions, type WebSocketCtor } from '../../src/index.js';
import { roomName, targets, within } from './targets.js';

type Chat = { chat: { text: string } };

describe.each(targets())('Node + ws against the %s', (_name, url) => {
  const make = (o: Partial<ClientOptions> = {}) =>
    new RoomcastClient({ url: url(), WebSocket: WebSocket as unknown as WebSocketCtor, network: false, ...o });

  it('connects, joins with history, publishes with ack and echo, and sees the other client', async () => {
    const name = roomName('it');
    const a = make();
    const b = make();
    try {
      const ra = a.join<Chat>(name, { history: 10, presence: true });
      await ra.ready();
      expect(a.state).toBe('connected');
      expect(a.welcome?.auth).toBe('none');
      const ack = await ra.publish('chat', { text: 'first' }, { echo: true });
      expect(ack.offset).toBe(1);

      const rb = b.join<Chat>(name, { history: 10 });
      const joined = await rb.ready();
      expect(joined.messages.map((m) => m.data.text)).toEqual(['first']);

      const got = within<string>((resolve) => rb.onEvent('chat', (d) => resolve(d.text)));
      await ra.publish('chat', { text: 'second' });
      expect(await got).toBe('second');

      const members = await within<string[]>((resolve) => {
        if (ra.members.length >= 2) resolve(ra.members.map((m) => m.user));
        ra.on('members', (ms) => ms.length >= 2 && resolve(ms.map((m) => m.user)));
      });
      expect(members).toHaveLength(2);
      await a.ping();
      const p = await a.presence(name);
      expect(p.members.length).toBe(2);
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });

  it('re-joins with since and gets exactly what it missed, in order', async () => {
    const name = roomName('it');
    const a = make();
    const b = make();
    try {
      const ra = a.join<Chat>(name);
      const rb = b.join<Chat>(name);
      await Promise.all([ra.ready(), rb.ready()]);
      const seen: string[] = [];
      rb.on('message', (m) => seen.push(m.data.text));
      await ra.publish('chat', { text: 'm1' });
      await within<void>((resolve) => (seen.length >= 1 ? resolve() : rb.onEvent('chat', () => seen.length >= 1 && resolve())));
      b.disconnect(); // rooms are kept, with their position
      for (const t of ['m2', 'm3', 'm4']) await ra.publish('chat', { text: t });
      const rejoined = within<{ recovered: boolean }>((resolve) => rb.once('joined', resolve));
      b.connect();
      expect((await rejoined).recovered).toBe(true);
      expect(seen).toEqual(['m1', 'm2', 'm3', 'm4']);
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });

  it('a resent publish with the same id is not delivered twice', async () => {
    const name = roomName('it');
    const a = make({ generateId: () => 'fixed-id-' + name });
    const b = make();
    try {
      const ra = a.join<Chat>(name);
      const rb = b.join<Chat>(name);
      await Promise.all([ra.ready(), rb.ready()]);
      const seen: string[] = [];
      rb.on('message', (m) => seen.push(m.data.text));
      const first = await ra.publish('chat', { text: 'once' });
      const again = await ra.publish('chat', { text: 'once' });
      expect(again.offset).toBe(first.offset);
      await b.ping();
      await a.ping();
      expect(seen).toEqual(['once']);
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });
});
