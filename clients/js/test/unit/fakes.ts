/** In-memory fakes of WebSocket, EventSource, fetch and the network monitor, for unit tests only. */
import type { NetworkMonitor } from '../../src/client.js';

export class FakeWebSocket {
  static instances: FakeWebSocket[] = [];
  static reset(): void {
    FakeWebSocket.instances = [];
  }
  static last(): FakeWebSocket {
    const ws = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (!ws) throw new Error('no FakeWebSocket created');
    return ws;
  }

  readyState = 0;
  binaryType = 'blob';
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  /** Frames the client sent, decoded. */
  sent: any[] = [];
  closedByClient?: { code?: number; reason?: string };

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeWebSocket.instances.push(this);
  }

  send(data: string | ArrayBufferLike | Uint8Array): void {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(typeof data === 'string' ? JSON.parse(data) : data);
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // ---- the server's side ----
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(msg: unknown): void {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  welcome(heartbeat = 25, extra: Record<string, unknown> = {}): void {
    if (this.readyState !== 1) this.open();
    this.receive({ type: 'welcome', session: 's1', node: 'n1', user: 'u1', heartbeat, auth: 'jwt', ...extra });
  }
  serverClose(code = 1006, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** Fail before opening, as a blocked upgrade does. */
  fail(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: '' });
  }
  ofType(type: string): any[] {
    return this.sent.filter((m) => m && m.type === type);
  }
  lastOfType(type: string): any {
    const all = this.ofType(type);
    return all[all.length - 1];
  }
  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }
}

export class FakeEventSource {
  static instances: FakeEventSource[] = [];
  static reset(): void {
    FakeEventSource.instances = [];
  }
  static last(): FakeEventSource {
    const es = FakeEventSource.instances[FakeEventSource.instances.length - 1];
    if (!es) throw new Error('no FakeEventSource created');
    return es;
  }
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  closed = false;
  private listeners = new Map<string, ((ev: { data: string; lastEventId?: string }) => void)[]>();
  constructor(readonly url: string) {
    FakeEventSource.instances.push(this);
  }
  addEventListener(type: string, fn: (ev: { data: string; lastEventId?: string }) => void): void {
    const l = this.listeners.get(type) ?? [];
    l.push(fn);
    this.listeners.set(type, l);
  }
  close(): void {
    this.closed = true;
    this.readyState = 2;
  }
  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }
  // ---- the server's side ----
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  emitMessage(msg: { room: string; offset?: number; [k: string]: unknown }): void {
    for (const fn of this.listeners.get('message') ?? []) {
      fn({ data: JSON.stringify(msg), lastEventId: `${msg.room}:${msg.offset}` });
    }
  }
  error(): void {
    this.readyState = 0;
    this.onerror?.({});
  }
}

export interface FetchCall {
  url: string;
  headers: Record<string, string>;
  body: any;
}

/** A fetch that answers POST /client/commands with the given responder. */
export function fakeFetch(respond: (cmds: any[]) => { status?: number; body: unknown }) {
  const calls: FetchCall[] = [];
  const fn = async (url: string, init: { method: string; headers: Record<string, string>; body: string }) => {
    const body = JSON.parse(init.body);
    calls.push({ url, headers: init.headers, body });
    const r = respond(Array.isArray(body) ? body : [body]);
    const status = r.status ?? 200;
    return { ok: status >= 200 && status < 300, status, text: async () => JSON.stringify(r.body) };
  };
  return { fetch: fn, calls };
}

export class FakeNetwork implements NetworkMonitor {
  online = true;
  private subs: { on: () => void; off: () => void }[] = [];
  isOnline(): boolean {
    return this.online;
  }
  subscribe(onOnline: () => void, onOffline: () => void): () => void {
    const s = { on: onOnline, off: onOffline };
    this.subs.push(s);
    return () => {
      this.subs = this.subs.filter((x) => x !== s);
    };
  }
  goOffline(): void {
    this.online = false;
    for (const s of [...this.subs]) s.off();
  }
  goOnline(): void {
    this.online = true;
    for (const s of [...this.subs]) s.on();
  }
}

/** A JWT with the given claims (unsigned: the client never verifies). */
export function fakeJwt(claims: Record<string, unknown>): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.sig`;
}

export function msg(room: string, offset: number | undefined, event = 'chat', data: unknown = { n: offset }) {
  const m: { room: string; offset?: number; [k: string]: unknown } = { type: 'message', room, event, data, from: 'u2', ts: 1 };
  if (offset !== undefined) m.offset = offset;
  return m;
}
