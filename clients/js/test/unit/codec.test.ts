import * as msgpack from '@msgpack/msgpack';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createMsgpackCodec, jsonCodec } from '../../src/codec.js';
import { msgpackCodec } from '../../src/msgpack.js';
import { FakeWebSocket } from './fakes.js';
import { makeClient } from './helpers.js';

describe('codecs', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('json round trip', () => {
    expect(jsonCodec.decode(jsonCodec.encode({ type: 'ping', id: '1' }))).toEqual({ type: 'ping', id: '1' });
    expect(jsonCodec.decode(new TextEncoder().encode('{"type":"pong"}'))).toEqual({ type: 'pong' });
  });

  it('msgpack: binary frames with string keys, from an ArrayBuffer', () => {
    const c = createMsgpackCodec(msgpack);
    expect(c.subprotocol).toBe('roomcast.v1.msgpack');
    const bytes = c.encode({ type: 'publish', room: 'r', event: 'e', data: { a: [1, 2] }, id: 'x' }) as Uint8Array;
    expect(msgpack.decode(bytes)).toEqual({ type: 'publish', room: 'r', event: 'e', data: { a: [1, 2] }, id: 'x' });
    const frame = msgpack.encode({ type: 'ack', id: 'x', offset: 2 ** 40 });
    const ab = frame.buffer.slice(frame.byteOffset, frame.byteOffset + frame.byteLength);
    expect(c.decode(ab)).toEqual({ type: 'ack', id: 'x', offset: 2 ** 40 });
  });

  it('the client offers roomcast.v1.msgpack and speaks it', async () => {
    const client = makeClient({ codec: msgpackCodec });
    const ws = FakeWebSocket.last();
    expect(ws.protocols).toEqual(['roomcast.v1.msgpack']);
    expect(ws.binaryType).toBe('arraybuffer');
    ws.open();
    const welcome = msgpack.encode({ type: 'welcome', session: 's', node: 'n', user: 'u', heartbeat: 25, auth: 'none' });
    ws.onmessage!({ data: welcome.slice().buffer });
    expect(client.state).toBe('connected');
    const room = client.join('r');
    const join = ws.sent[0];
    expect(join).toBeInstanceOf(Uint8Array);
    expect(msgpack.decode(join)).toMatchObject({ type: 'join', room: 'r' });
    ws.onmessage!({ data: msgpack.encode({ type: 'joined', room: 'r', offset: 0, epoch: 'e', recovered: false, messages: [] }) });
    expect(room.state).toBe('joined');
    client.disconnect();
  });
});
