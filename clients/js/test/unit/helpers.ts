import { RoomcastClient, type ClientOptions } from '../../src/index.js';
import type { EventMap } from '../../src/room.js';
import { FakeEventSource, FakeWebSocket } from './fakes.js';

export function makeClient<D extends EventMap = EventMap>(opts: Partial<ClientOptions> = {}): RoomcastClient<D> {
  FakeWebSocket.reset();
  FakeEventSource.reset();
  return new RoomcastClient<D>({
    url: 'ws://127.0.0.1:9/ws',
    WebSocket: FakeWebSocket as any,
    network: false,
    random: () => 0.5,
    ...opts,
  });
}

/** Records every event of an emitter-like object. */
export function record(target: { on(ev: any, fn: (...a: any[]) => void): () => void }, events: string[]) {
  const log: [string, ...any[]][] = [];
  for (const e of events) target.on(e, (...args: any[]) => log.push([e, ...args]));
  return log;
}

/** Connect the client's current socket and answer the welcome. */
export function welcome(heartbeat = 25) {
  const ws = FakeWebSocket.last();
  ws.welcome(heartbeat);
  return ws;
}
