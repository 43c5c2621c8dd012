import type { Codec } from './codec.js';
import type { ClientMessage, ErrorMsg, ServerMessage } from './protocol.js';

/** The parts of the WHATWG WebSocket that the client uses (browsers' and the `ws` package's both fit). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | ArrayBufferLike | Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** The parts of the WHATWG EventSource that the client uses. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  addEventListener(type: string, fn: (ev: { data: string; lastEventId?: string }) => void): void;
  close(): void;
}
export type EventSourceCtor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;

export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body: string },
) => Promise<{ ok: boolean; status: number; text(): Promise<string> }>;

export interface TransportHandlers {
  /** The transport is usable (WebSocket: the upgrade succeeded; HTTP: the event stream is open). */
  onOpen(rooms?: string[]): void;
  onMessage(msg: ServerMessage): void;
  /** The transport failed or was closed by the peer; never called after `close()`. */
  onClose(code: number, reason: string): void;
  onError(err: unknown): void;
}

/** Told how a transport closed by `close()` really ended: the code and reason of the close. */
export type ClosedCallback = (code: number, reason: string) => void;

export interface Transport {
  readonly kind: 'websocket' | 'http';
  send(msg: ClientMessage): void;
  /**
   * Close without calling `onClose`. `onClosed`, when given, is called once with what the
   * close really was (WebSocket: the close event's code and reason, such as the server's answer
   * to our Close frame, 1006 when the connection died first; HTTP: 1000, the stream has no code),
   * never synchronously. It may never be called when the socket never reports its close.
   */
  close(code?: number, reason?: string, onClosed?: ClosedCallback): void;
}

/** roomcast over one WebSocket. */
export class WebSocketTransport implements Transport {
  readonly kind = 'websocket' as const;
  private ws: WebSocketLike;
  private done = false;

  constructor(
    url: string,
    private codec: Codec,
    Ctor: WebSocketCtor,
    private h: TransportHandlers,
    offerSubprotocol = true,
  ) {
    this.ws = offerSubprotocol ? new Ctor(url, [codec.subprotocol]) : new Ctor(url);
    try {
      this.ws.binaryType = 'arraybuffer';
    } catch {
      /* some implementations have a read-only binaryType */
    }
    this.ws.onopen = () => {
      if (!this.done) this.h.onOpen();
    };
    this.ws.onmessage = (ev) => {
      if (this.done) return;
      let msg: ServerMessage;
      try {
        msg = this.codec.decode(ev.data);
      } catch (err) {
        this.h.onError(err);
        return;
      }
      this.h.onMessage(msg);
    };
    this.ws.onclose = (ev) => {
      if (this.done) return;
      this.done = true;
      this.h.onClose(ev?.code ?? 1006, ev?.reason ?? '');
    };
    this.ws.onerror = () => {
      /* a close event follows */
    };
  }

  send(msg: ClientMessage): void {
    if (this.done) return;
    this.ws.send(this.codec.encode(msg));
  }

  close(code = 1000, reason = '', onClosed?: ClosedCallback): void {
    if (this.done) return;
    this.done = true;
    this.ws.onopen = this.ws.onmessage = null;
    // Keep listening for the close event: it says how the connection really ended.
    this.ws.onclose = onClosed
      ? (ev) => {
          this.ws.onclose = null;
          onClosed(ev?.code ?? 1006, ev?.reason ?? '');
        }
      : null;
    try {
      // Browsers accept only 1000 and 3000-4999 from a client.
      const c = code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000;
      this.ws.close(c, reason);
    } catch {
      /* already closed */
    }
  }
}

export interface SseRoom {
  room: string;
  offset?: number;
}

export interface HttpTransportOptions {
  /** Base URL such as `https://host` (no trailing slash); `/sse` and `/client/commands` are appended. */
  baseUrl: string;
  token?: string;
  EventSource: EventSourceCtor;
  fetch: FetchLike;
  handlers: TransportHandlers;
  /** The rooms to stream and where to resume each. */
  rooms(): SseRoom[];
}

/**
 * The fallback transport: receive over Server-Sent Events (`GET /sse`), send over HTTP
 * (`POST /client/commands`). Joining or leaving a room reopens the event stream with the new
 * room list, resuming every room from its last offset.
 */
export class HttpTransport implements Transport {
  readonly kind = 'http' as const;
  private es?: EventSourceLike;
  private done = false;
  private opened = false;
  private queue: ClientMessage[] = [];
  private flushScheduled = false;
  private reopenScheduled = false;

  constructor(private o: HttpTransportOptions) {
    this.open();
  }

  token(): string | undefined {
    return this.o.token;
  }

  setToken(token: string | undefined): void {
    this.o.token = token;
  }

  /** Reopen the event stream with the current room list (coalesced within one tick). */
  updateRooms(): void {
    if (this.done || this.reopenScheduled) return;
    this.reopenScheduled = true;
    queueMicrotask(() => {
      this.reopenScheduled = false;
      if (!this.done) this.open();
    });
  }

  private open(): void {
    if (this.es) {
      const old = this.es;
      old.onopen = old.onerror = null;
      old.close();
      this.es = undefined;
    }
    const rooms = this.o.rooms();
    const names = rooms.map((r) => r.room);
    if (names.length === 0) {
      // Nothing to receive: sending over HTTP works without a stream.
      queueMicrotask(() => {
        if (!this.done) this.markOpen(names);
      });
      return;
    }
    const params = new URLSearchParams();
    params.set('rooms', names.join(','));
    const since = rooms.filter((r) => r.offset !== undefined).map((r) => `${r.room}:${r.offset}`);
    if (since.length) params.set('since', since.join(','));
    if (this.o.token) params.set('token', this.o.token);
    const es = new this.o.EventSource(`${this.o.baseUrl}/sse?${params.toString()}`);
    this.es = es;
    es.onopen = () => {
      if (this.es === es && !this.done) this.markOpen(names);
    };
    es.onerror = () => {
      if (this.es !== es || this.done) return;
      // Reconnection is the client's (fresh token, since positions, backoff), not EventSource's.
      this.fail(1006, 'event stream failed');
    };
    es.addEventListener('message', (ev) => {
      if (this.es !== es || this.done) return;
      let data: unknown;
      try {
        data = JSON.parse(ev.data);
      } catch (err) {
        this.o.handlers.onError(err);
        return;
      }
      if (data && typeof data === 'object') {
        const m = data as { type?: string };
        this.o.handlers.onMessage({ ...(m as object), type: m.type ?? 'message' } as ServerMessage);
      }
    });
  }

  private markOpen(names: string[]): void {
    this.opened = true;
    this.o.handlers.onOpen(names);
    this.scheduleFlush();
  }

  send(msg: ClientMessage): void {
    if (this.done) return;
    if (msg.type === 'join' || msg.type === 'leave' || msg.type === 'auth') return; // handled by updateRooms / token
    this.queue.push(msg);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || !this.opened) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    if (this.done || this.queue.length === 0) return;
    const batch = this.queue;
    this.queue = [];
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.o.token) headers.authorization = `Bearer ${this.o.token}`;
    let status = 0;
    let text = '';
    try {
      const res = await this.o.fetch(`${this.o.baseUrl}/client/commands`, {
        method: 'POST',
        headers,
        body: JSON.stringify(batch),
      });
      status = res.status;
      text = await res.text();
      if (this.done) return;
      if (!res.ok) {
        this.failBatch(batch, status, text);
        return;
      }
    } catch (err) {
      if (this.done) return;
      this.o.handlers.onError(err);
      // The commands with ids stay in the client's outbox and are resent on the next connection.
      this.fail(1006, 'HTTP request failed');
      return;
    }
    let replies: unknown;
    try {
      replies = text ? JSON.parse(text) : [];
    } catch (err) {
      this.o.handlers.onError(err);
      return;
    }
    for (const r of Array.isArray(replies) ? replies : [replies]) {
      if (r && typeof r === 'object' && typeof (r as { type?: unknown }).type === 'string') {
        this.o.handlers.onMessage(r as ServerMessage);
      }
    }
  }

  private failBatch(batch: ClientMessage[], status: number, text: string): void {
    let code = status === 401 ? 'unauthorized' : 'http_error';
    let message = `HTTP ${status}`;
    try {
      const body = JSON.parse(text) as { error?: { code?: string; message?: string } };
      if (body.error?.code) code = body.error.code;
      if (body.error?.message) message = body.error.message;
    } catch {
      /* not JSON */
    }
    for (const cmd of batch) {
      const id = (cmd as { id?: string }).id;
      if (id !== undefined) {
        const err: ErrorMsg = { type: 'error', code, message, id };
        this.o.handlers.onMessage(err);
      }
    }
    if (status === 401) this.fail(4002, message);
  }

  private fail(code: number, reason: string): void {
    if (this.done) return;
    this.close();
    this.o.handlers.onClose(code, reason);
  }

  close(_code?: number, reason = '', onClosed?: ClosedCallback): void {
    if (this.done) return;
    this.done = true;
    if (this.es) {
      this.es.onopen = this.es.onerror = null;
      this.es.close();
      this.es = undefined;
    }
    this.queue = [];
    // An event stream closed by the client ends at once and has no close code: a normal closure.
    if (onClosed) queueMicrotask(() => onClosed(1000, reason));
  }
}
