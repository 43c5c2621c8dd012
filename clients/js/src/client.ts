import { backoffDelay, type BackoffOptions } from './backoff.js';
import { jsonCodec, type Codec } from './codec.js';
import { Emitter } from './emitter.js';
import { RoomcastError } from './errors.js';
import { jwtExp } from './jwt.js';
import {
  CloseCodes,
  describeCloseCode,
  type ClientMessage,
  type DirectMessage,
  type ErrorMsg,
  type PresenceCmd,
  type PresenceMsg,
  type PublishCmd,
  type ServerMessage,
  type WelcomeMsg,
} from './protocol.js';
import { Room, type EventMap, type JoinOptions, type PublishAck, type PublishOptions, type RoomHost } from './room.js';
import {
  HttpTransport,
  WebSocketTransport,
  type EventSourceCtor,
  type FetchLike,
  type Transport,
  type TransportHandlers,
  type WebSocketCtor,
} from './transport.js';

export type ConnectionState = 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'closed';
export type TransportKind = 'websocket' | 'http';
export type TokenCallback = () => string | Promise<string>;

/** Online/offline notifications (browsers: `window` and `navigator.onLine`). */
export interface NetworkMonitor {
  isOnline(): boolean;
  /** Subscribe; returns the unsubscribe function. */
  subscribe(onOnline: () => void, onOffline: () => void): () => void;
}

export interface HeartbeatOptions {
  /** Interval between `ping` messages (default: the `heartbeat` of the server's welcome). */
  intervalMs?: number;
  /** How long to wait for a `pong` (or any frame) after a ping before the connection is dead (default min(interval, 10 s)). */
  timeoutMs?: number;
}

export interface ClientOptions {
  /** WebSocket URL of the node, such as `wss://example.com/ws`. */
  url: string;
  /** Base URL for the fallback (`/sse`, `/client/commands`); default: `url` with http(s) and without the `/ws` path. */
  httpUrl?: string;
  /** A JWT, or a function giving one (called on every connect and before the token expires). Omit with `--auth none`. */
  token?: string | TokenCallback;
  /** WebSocket constructor (Node: `import WebSocket from 'ws'`); default `globalThis.WebSocket`. */
  WebSocket?: WebSocketCtor;
  /** EventSource constructor for the fallback; default `globalThis.EventSource`. */
  EventSource?: EventSourceCtor;
  /** fetch for the fallback; default `globalThis.fetch`. */
  fetch?: FetchLike;
  /** Frame codec; default JSON (`roomcast.v1.json`). */
  codec?: Codec;
  /** Offer the codec's subprotocol on the upgrade (default true). */
  offerSubprotocol?: boolean;
  /** `auto` (default): WebSocket, then HTTP after `fallbackAfter` failures; or force one. */
  transport?: 'auto' | TransportKind;
  /** WebSocket attempts that fail before a connection was ever made, before falling back to HTTP (default 3). */
  fallbackAfter?: number;
  /** Backoff settings, or false to never reconnect. */
  reconnect?: BackoffOptions | false;
  /** Heartbeat settings, or false for no client pings. */
  heartbeat?: HeartbeatOptions | false;
  /** Time to wait for the ack of a request once sent (default 10 000 ms). */
  ackTimeoutMs?: number;
  /** Most unacknowledged publishes/sends kept (default 1000); more are refused with `outbox_full`. */
  outboxSize?: number;
  /**
   * An unacknowledged message first sent longer ago than this is not resent but rejected with
   * `outbox_expired`, since the server's dedupe window (120 s) may be over (default 100 000 ms).
   */
  outboxMaxAgeMs?: number;
  /** Refresh the token this long before its `exp` (default 30 000 ms, at most half its lifetime). */
  tokenRefreshMarginMs?: number;
  /** Online/offline monitor, or false; default: the browser's, when there is one. */
  network?: NetworkMonitor | false;
  /** Random source in [0, 1) for jitter (tests). */
  random?: () => number;
  /** Id generator for requests (default: a random prefix and a counter). */
  generateId?: () => string;
  /** Connect at once (default true). */
  autoConnect?: boolean;
}

export interface DisconnectInfo {
  code: number;
  reason: string;
  willReconnect: boolean;
}

export type DirectMessageOf<D extends EventMap> = {
  [K in keyof D & string]: DirectMessage<D[K], K>;
}[keyof D & string];

export type ClientEvents<D extends EventMap> = {
  /** New state, previous state. */
  state: [ConnectionState, ConnectionState];
  connecting: [{ attempt: number; transport: TransportKind }];
  /** The welcome message (WebSocket), or null over the HTTP fallback. */
  connected: [WelcomeMsg | null];
  disconnected: [DisconnectInfo];
  reconnecting: [{ attempt: number; delayMs: number; code: number; reason: string }];
  /** Gave up (max attempts, or the token was refused twice), or reconnect disabled. */
  closed: [{ code: number; reason: string }];
  transport: [TransportKind];
  direct: [DirectMessageOf<D>];
  token: [{ exp?: number }];
  error: [Error];
};

interface Pending {
  id: string;
  cmd: ClientMessage;
  /** Kept across reconnects and resent with the same id. */
  outbox: boolean;
  /** Wait for this room to be joined before sending. */
  room?: string;
  timeoutMs: number;
  sent: boolean;
  firstSentAt?: number;
  timer?: ReturnType<typeof setTimeout>;
  /** Called when settled, before the promise's callbacks run. */
  onSettle?: (result: Error | ServerMessage) => void;
  resolve(v: unknown): void;
  reject(e: Error): void;
}

function defaultNetwork(): NetworkMonitor | undefined {
  const g = globalThis as {
    window?: { addEventListener?: unknown; removeEventListener?: unknown };
    navigator?: { onLine?: boolean };
  };
  const w = g.window as
    | { addEventListener(t: string, f: () => void): void; removeEventListener(t: string, f: () => void): void }
    | undefined;
  if (!w || typeof w.addEventListener !== 'function') return undefined;
  return {
    isOnline: () => g.navigator?.onLine !== false,
    subscribe(onOnline, onOffline) {
      w.addEventListener('online', onOnline);
      w.addEventListener('offline', onOffline);
      return () => {
        w.removeEventListener('online', onOnline);
        w.removeEventListener('offline', onOffline);
      };
    },
  };
}

function defaultIdGenerator(): () => string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  const prefix =
    typeof c?.randomUUID === 'function'
      ? c.randomUUID().replace(/-/g, '').slice(0, 16)
      : Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
  let n = 0;
  return () => `${prefix}-${(++n).toString(36)}`;
}

/** The HTTP base of a WebSocket URL: `wss://h/ws` → `https://h`. */
export function httpBaseFromWsUrl(url: string): string {
  const u = new URL(url);
  u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
  u.search = '';
  u.hash = '';
  u.pathname = u.pathname.replace(/\/ws\/?$/, '') || '/';
  return u.toString().replace(/\/$/, '');
}

const THROTTLE_CODES = new Set<number>([CloseCodes.POLICY_VIOLATION, CloseCodes.RATE_LIMIT_ABUSED, CloseCodes.TRY_AGAIN_LATER]);
const HEARTBEAT_TIMEOUT = 4000;
/** How long `disconnect()` waits for the socket's close event before reporting 1006. */
const CLOSE_CONFIRM_MS = 3000;

/**
 * A roomcast client. `D` types direct messages (`send` / the `direct` event): a map of event names to data.
 *
 * ```ts
 * const client = new RoomcastClient({ url: 'wss://example.com/ws', token: () => fetchToken() });
 * const room = client.join<{ chat: { text: string } }>('chat:lobby', { history: 50 });
 * room.onEvent('chat', (data, msg) => console.log(msg.from, data.text));
 * await room.publish('chat', { text: 'hello' });
 * ```
 */
export class RoomcastClient<D extends EventMap = EventMap> extends Emitter<ClientEvents<D>> implements RoomHost {
  private o: Required<
    Pick<ClientOptions, 'ackTimeoutMs' | 'outboxSize' | 'outboxMaxAgeMs' | 'tokenRefreshMarginMs' | 'fallbackAfter'>
  > &
    ClientOptions;
  private _state: ConnectionState = 'disconnected';
  private _transportKind: TransportKind;
  private transport?: Transport;
  private rooms = new Map<string, Room<any>>();
  private pending = new Map<string, Pending>();
  private outboxCount = 0;
  private nextId: () => string;
  private random: () => number;
  private codec: Codec;

  private attempt = 0;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private connectSeq = 0;
  private welcomed = false;
  private _welcome?: WelcomeMsg;
  private wsEverWelcomed = false;
  private wsFailures = 0;
  private tokenRetried = false;
  private currentToken?: string;
  private tokenExp?: number;
  private refreshTimer?: ReturnType<typeof setTimeout>;
  private heartbeatTimer?: ReturnType<typeof setTimeout>;
  private pongTimer?: ReturnType<typeof setTimeout>;
  private pingSeq = 0;
  private network?: NetworkMonitor;
  private unsubscribeNetwork?: () => void;
  private offline = false;
  private directHandlers = new Map<string, Set<(data: any, msg: any) => void>>();
  /** The `disconnected` report of a `disconnect()` waiting for the socket's close event. */
  private clientClose?: { report: (code: number, reason: string) => void; timer: ReturnType<typeof setTimeout> };

  constructor(options: ClientOptions) {
    super();
    this.o = {
      ackTimeoutMs: 10_000,
      outboxSize: 1000,
      outboxMaxAgeMs: 100_000,
      tokenRefreshMarginMs: 30_000,
      fallbackAfter: 3,
      ...options,
    };
    this.codec = options.codec ?? jsonCodec;
    this.random = options.random ?? Math.random;
    this.nextId = options.generateId ?? defaultIdGenerator();
    this._transportKind = options.transport === 'http' ? 'http' : 'websocket';
    this.network = options.network === false ? undefined : (options.network ?? defaultNetwork());
    if (typeof options.token === 'string') this.currentToken = options.token;
    if (options.autoConnect !== false) this.connect();
  }

  // ---- public API ----------------------------------------------------------------------

  get state(): ConnectionState {
    return this._state;
  }

  /** The transport in use (or to be used on the next attempt). */
  get transportKind(): TransportKind {
    return this._transportKind;
  }

  /** The welcome of the current WebSocket connection. */
  get welcome(): WelcomeMsg | undefined {
    return this._welcome;
  }

  /** Number of unacknowledged publishes and sends kept in the outbox. */
  get outboxLength(): number {
    return this.outboxCount;
  }

  /** Start connecting (no-op when already connecting or connected). */
  connect(): void {
    if (this._state === 'connecting' || this._state === 'connected' || this._state === 'reconnecting') return;
    this.settleClientClose(); // the last disconnect() is reported before this connection's events
    this.attempt = 0;
    this.tokenRetried = false;
    if (this.network && !this.unsubscribeNetwork) {
      this.unsubscribeNetwork = this.network.subscribe(
        () => this.onOnline(),
        () => this.onOffline(),
      );
    }
    this.offline = this.network ? !this.network.isOnline() : false;
    if (this.offline) {
      this.setState('disconnected');
      return;
    }
    this.openTransport();
  }

  /**
   * Close the connection and stop reconnecting; pending requests are rejected. Rooms are kept for a later `connect()`.
   * The state is `disconnected` at once; the `disconnected` event follows with how the connection really
   * ended: the code and reason of the socket's close event (1000 when the server answered our Close frame;
   * whatever it sent first, e.g. 1001, if it was already closing), 1000 without a connection or over the
   * HTTP fallback, or 1006 (`close not confirmed`) when the socket reports no close within 3 s or before
   * the next `connect()`.
   */
  disconnect(): void {
    this.clearReconnect();
    this.unsubscribeNetwork?.();
    this.unsubscribeNetwork = undefined;
    this.settleClientClose(); // an earlier disconnect() not confirmed yet
    const had = !!this.transport || this._state !== 'disconnected';
    const hadTransport = !!this.transport;
    if (hadTransport) {
      let reported = false;
      const report = (code: number, reason: string) => {
        if (reported) return;
        reported = true;
        if (this.clientClose?.report === report) {
          clearTimeout(this.clientClose.timer);
          this.clientClose = undefined;
        }
        this.emit('disconnected', { code, reason: reason || describeCloseCode(code), willReconnect: false });
      };
      this.clientClose = { report, timer: setTimeout(() => this.settleClientClose(), CLOSE_CONFIRM_MS) };
      this.teardownTransport(1000, 'client disconnect', report);
    } else {
      this.teardownTransport(1000, 'client disconnect');
    }
    this.rejectAll('disconnected', 'client disconnected');
    if (had) {
      this.setState('disconnected');
      if (!hadTransport) this.emit('disconnected', { code: 1000, reason: 'client disconnect', willReconnect: false });
    }
  }

  /** A client close the socket has not confirmed: report it now as not confirmed (1006). */
  private settleClientClose(): void {
    this.clientClose?.report(CloseCodes.ABNORMAL, 'client disconnect: close not confirmed');
  }

  /** Join a room (or get the room already joined); it is re-joined after every reconnect until `leave()`. */
  join<E extends EventMap = EventMap>(name: string, opts: JoinOptions = {}): Room<E> {
    const existing = this.rooms.get(name);
    if (existing) return existing as Room<E>;
    const room = new Room<E>(this, name, opts);
    this.rooms.set(name, room);
    this._roomJoinNeeded(room);
    return room;
  }

  /** The room of that name, when joined. */
  room<E extends EventMap = EventMap>(name: string): Room<E> | undefined {
    return this.rooms.get(name) as Room<E> | undefined;
  }

  /** Leave a room. */
  leave(name: string): Promise<void> {
    const room = this.rooms.get(name);
    return room ? this._roomLeave(room) : Promise.resolve();
  }

  /** Send a direct message to every connection of a user; resolves on the ack. Kept in the outbox across reconnects. */
  send<K extends keyof D & string>(to: string, event: K, data: D[K], opts: { timeoutMs?: number } = {}): Promise<void> {
    const id = this.nextId();
    return this.request({ type: 'send', to, event, data, id }, { outbox: true, timeoutMs: opts.timeoutMs }).then(
      () => undefined,
    );
  }

  /** Listen to one direct-message event with its typed data. */
  onDirect<K extends keyof D & string>(event: K, fn: (data: D[K], msg: DirectMessage<D[K], K>) => void): () => void {
    let set = this.directHandlers.get(event);
    if (!set) this.directHandlers.set(event, (set = new Set()));
    set.add(fn);
    return () => set!.delete(fn);
  }

  /** Presence of a room, joined or not. */
  presence(room: string, opts: { limit?: number; timeoutMs?: number } = {}): Promise<PresenceMsg> {
    const id = this.nextId();
    const cmd: PresenceCmd & { id: string } = { type: 'presence', room, id };
    if (opts.limit !== undefined) cmd.limit = opts.limit;
    return this.request(cmd, { outbox: false, timeoutMs: opts.timeoutMs }) as Promise<PresenceMsg>;
  }

  /** Round trip to the server. */
  ping(opts: { timeoutMs?: number } = {}): Promise<void> {
    const id = this.nextId();
    return this.request({ type: 'ping', id }, { outbox: false, timeoutMs: opts.timeoutMs }).then(() => undefined);
  }

  // ---- RoomHost ---------------------------------------------------------------------

  /** @internal */
  _roomJoinNeeded(room: Room<any>): void {
    if (this.transport instanceof HttpTransport) this.transport.updateRooms();
    else if (this._state === 'connected' && this.transport) this.transport.send(room._joinCommand(this.nextId()));
  }

  /** @internal */
  _roomLeave(room: Room<any>): Promise<void> {
    if (this.rooms.get(room.name) !== room) return Promise.resolve();
    this.rooms.delete(room.name);
    for (const p of [...this.pending.values()]) {
      if (p.room === room.name) this.settle(p, new RoomcastError('left', `left room ${room.name}`, p.id));
    }
    const wasJoined = room.state === 'joined';
    room._left();
    const t = this.transport;
    if (!t || this._state !== 'connected') return Promise.resolve();
    if (t instanceof HttpTransport) {
      t.updateRooms();
      return Promise.resolve();
    }
    if (!wasJoined) {
      // A join may be in flight: the server handles frames in order, so this leave undoes it.
      t.send({ type: 'leave', room: room.name });
      return Promise.resolve();
    }
    const id = this.nextId();
    return this.request({ type: 'leave', room: room.name, id }, { outbox: false }).then(
      () => undefined,
      () => undefined,
    );
  }

  /** @internal */
  _roomPublish(room: Room<any>, event: string, data: unknown, opts: PublishOptions): Promise<PublishAck> {
    if (room.state === 'left') return Promise.reject(new RoomcastError('left', `left room ${room.name}`));
    const id = this.nextId();
    const cmd: PublishCmd & { id: string } = { type: 'publish', room: room.name, event, data, id };
    if (opts.echo) cmd.echo = true;
    if (opts.volatile) cmd.volatile = true;
    // Without echo the server does not send our message back: the room must know its offset
    // (from the ack), or the next live offset would look like a gap.
    const track =
      opts.echo || opts.volatile
        ? undefined
        : {
            start: () => room._ownPublishStarted(),
            settle: (r: Error | ServerMessage) => {
              const offset = !(r instanceof Error) && r.type === 'ack' ? r.offset : undefined;
              room._ownPublishSettled(typeof offset === 'number' ? offset : undefined);
            },
          };
    return this.request(cmd, { outbox: !opts.volatile, room: room.name, timeoutMs: opts.timeoutMs, ...(track ? { track } : {}) }).then(
      (reply) => {
        const ack = reply as { offset?: number };
        return ack.offset === undefined ? { id } : { id, offset: ack.offset };
      },
    );
  }

  /** @internal */
  _roomPublishVolatile(room: Room<any>, event: string, data: unknown): boolean {
    if (this._state !== 'connected' || !this.transport || room.state !== 'joined') return false;
    this.transport.send({ type: 'publish', room: room.name, event, data, volatile: true });
    return true;
  }

  /** @internal */
  _roomPresence(room: Room<any>, limit?: number): Promise<PresenceMsg> {
    return this.presence(room.name, limit === undefined ? {} : { limit });
  }

  // ---- requests and the outbox ------------------------------------------------------

  private request(
    cmd: ClientMessage & { id: string },
    o: {
      outbox: boolean;
      room?: string;
      timeoutMs?: number | undefined;
      /** Told synchronously once the request is made (not refused at once) and when it settles. */
      track?: { start(): void; settle(result: Error | ServerMessage): void };
    },
  ): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (o.outbox) {
        if (this.outboxCount >= this.o.outboxSize) {
          reject(new RoomcastError('outbox_full', `outbox full (${this.o.outboxSize} unacknowledged messages)`, cmd.id));
          return;
        }
        if (this._state === 'closed') {
          reject(new RoomcastError('closed', 'client closed', cmd.id));
          return;
        }
      } else if (this._state !== 'connected') {
        reject(new RoomcastError('not_connected', 'not connected', cmd.id));
        return;
      }
      const p: Pending = {
        id: cmd.id,
        cmd,
        outbox: o.outbox,
        timeoutMs: o.timeoutMs ?? this.o.ackTimeoutMs,
        sent: false,
        resolve,
        reject,
      };
      if (o.room !== undefined) p.room = o.room;
      if (o.track) {
        o.track.start();
        p.onSettle = o.track.settle;
      }
      this.pending.set(p.id, p);
      if (o.outbox) this.outboxCount++;
      if (this.canSend(p)) this.transmit(p);
    });
  }

  private canSend(p: Pending): boolean {
    if (this._state !== 'connected' || !this.transport) return false;
    if (p.room === undefined) return true;
    const room = this.rooms.get(p.room);
    return !room || room.state !== 'joining';
  }

  private transmit(p: Pending): void {
    const now = Date.now();
    if (p.firstSentAt !== undefined && now - p.firstSentAt > this.o.outboxMaxAgeMs) {
      this.settle(p, new RoomcastError('outbox_expired', 'not acknowledged within the dedupe window', p.id));
      return;
    }
    p.sent = true;
    p.firstSentAt ??= now;
    p.timer = setTimeout(() => {
      this.settle(p, new RoomcastError('timeout', `no reply to ${p.cmd.type} within ${p.timeoutMs} ms`, p.id));
    }, p.timeoutMs);
    this.transport!.send(p.cmd);
  }

  private settle(p: Pending, result: Error | ServerMessage): void {
    if (this.pending.get(p.id) !== p) return;
    this.pending.delete(p.id);
    if (p.outbox) this.outboxCount--;
    if (p.timer) clearTimeout(p.timer);
    p.onSettle?.(result);
    if (result instanceof Error) p.reject(result);
    else if (result.type === 'error') p.reject(new RoomcastError(result.code, result.message, p.id));
    else p.resolve(result);
  }

  /** Send every unsent request that may go now (all of them, or those of one room), in the order they were made. */
  private flushOutbox(room?: string): void {
    for (const p of [...this.pending.values()]) {
      if (p.sent) continue;
      if (room !== undefined && p.room !== room) continue;
      if (this.canSend(p)) this.transmit(p);
    }
  }

  private rejectAll(code: string, message: string): void {
    for (const p of [...this.pending.values()]) this.settle(p, new RoomcastError(code, message, p.id));
  }

  // ---- connection lifecycle ------------------------------------------------------------

  private setState(s: ConnectionState): void {
    if (s === this._state) return;
    const prev = this._state;
    this._state = s;
    this.emit('state', s, prev);
  }

  private resolveToken(): string | undefined | Promise<string | undefined> {
    const t = this.o.token;
    if (typeof t !== 'function') return this.currentToken;
    return t();
  }

  private openTransport(): void {
    this.clearReconnect();
    const seq = ++this.connectSeq;
    this.welcomed = false;
    this.setState('connecting');
    this.emit('connecting', { attempt: this.attempt, transport: this._transportKind });
    let tok: string | undefined | Promise<string | undefined>;
    try {
      tok = this.resolveToken();
    } catch (err) {
      this.tokenFailed(seq, err);
      return;
    }
    if (tok && typeof (tok as Promise<string>).then === 'function') {
      (tok as Promise<string | undefined>).then(
        (t) => {
          if (seq === this.connectSeq && this._state === 'connecting') this.startTransport(t);
        },
        (err) => this.tokenFailed(seq, err),
      );
    } else {
      this.startTransport(tok as string | undefined);
    }
  }

  private tokenFailed(seq: number, err: unknown): void {
    if (seq !== this.connectSeq || this._state !== 'connecting') return;
    this.emit('error', err instanceof Error ? err : new Error(String(err)));
    this.handleClose(1006, 'token callback failed');
  }

  private startTransport(token: string | undefined): void {
    this.currentToken = token;
    this.tokenExp = token ? jwtExp(token) : undefined;
    const handlers: TransportHandlers = {
      onOpen: (rooms) => this.onTransportOpen(rooms),
      onMessage: (m) => this.handleMessage(m),
      onClose: (code, reason) => this.handleClose(code, reason),
      onError: (err) => this.emit('error', err instanceof Error ? err : new Error(String(err))),
    };
    try {
      if (this._transportKind === 'http') {
        const ES = this.o.EventSource ?? (globalThis as { EventSource?: EventSourceCtor }).EventSource;
        const f = this.o.fetch ?? (globalThis as { fetch?: FetchLike }).fetch?.bind(globalThis);
        if (!ES || !f) throw new Error('the HTTP fallback needs EventSource and fetch');
        this.transport = new HttpTransport({
          baseUrl: this.o.httpUrl?.replace(/\/$/, '') ?? httpBaseFromWsUrl(this.o.url),
          ...(token ? { token } : {}),
          EventSource: ES,
          fetch: f,
          handlers,
          rooms: () => [...this.rooms.values()].map((r) => r._sseRoom()),
        });
      } else {
        const WS = this.o.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
        if (!WS) throw new Error('no WebSocket implementation: pass the `WebSocket` option (Node: the ws package)');
        const u = new URL(this.o.url);
        if (token) u.searchParams.set('token', token);
        this.transport = new WebSocketTransport(u.toString(), this.codec, WS, handlers, this.o.offerSubprotocol !== false);
      }
    } catch (err) {
      this.transport = undefined;
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      this.handleClose(1006, 'could not open transport');
    }
  }

  private onTransportOpen(rooms?: string[]): void {
    if (!(this.transport instanceof HttpTransport)) return; // WebSocket: wait for the welcome
    if (!this.welcomed) {
      this.welcomed = true;
      this.attempt = 0;
      this.tokenRetried = false;
      this.setState('connected');
      this.emit('connected', null);
      this.scheduleTokenRefresh();
    }
    // Rooms that are in this stream and were waiting are now joined (the stream resumes from `since`).
    const inStream = new Set(rooms ?? []);
    let missing = false;
    for (const room of this.rooms.values()) {
      if (!inStream.has(room.name)) missing = true;
      else if (room.state === 'joining') {
        const pos = room._sseRoom();
        room._joinCommand(this.nextId()); // records whether this join resumes
        room._handleJoined(
          {
            type: 'joined',
            room: room.name,
            offset: pos.offset ?? 0,
            epoch: room.epoch ?? 0,
            recovered: pos.offset !== undefined,
            messages: [],
          },
          true,
        );
        if (room.options.presence) this.fetchMembers(room);
      }
    }
    // Rooms joined while this stream was opening: reopen it with them.
    if (missing) this.transport.updateRooms();
    this.flushOutbox();
  }

  private handleMessage(msg: ServerMessage): void {
    if (!msg || typeof msg !== 'object') return;
    this.clearPongTimer();
    const id = (msg as { id?: string }).id;
    switch (msg.type) {
      case 'welcome':
        this.onWelcome(msg);
        return;
      case 'joined': {
        const room = this.rooms.get(msg.room);
        if (!room) return;
        room._handleJoined(msg);
        if (room.options.presence) this.fetchMembers(room);
        this.flushOutbox(room.name);
        return;
      }
      case 'message': {
        this.rooms.get(msg.room)?._handleMessage(msg);
        return;
      }
      case 'member_joined':
      case 'member_left':
        this.rooms.get(msg.room)?._handleMember(msg.type, msg.user);
        return;
      case 'member_count':
        this.rooms.get(msg.room)?._handleCount(msg.users, msg.connections);
        return;
      case 'direct': {
        this.emit('direct', msg as DirectMessageOf<D>);
        const set = this.directHandlers.get(msg.event);
        if (set) for (const fn of [...set]) fn(msg.data, msg);
        return;
      }
      case 'auth_ok':
        this.tokenExp = msg.exp;
        this.emit('token', { exp: msg.exp });
        this.scheduleTokenRefresh();
        return;
      case 'error':
        this.onError(msg);
        return;
      default:
        if (id !== undefined) {
          const p = this.pending.get(id);
          if (p) this.settle(p, msg);
        }
    }
  }

  private onError(msg: ErrorMsg): void {
    if (msg.id !== undefined) {
      const p = this.pending.get(msg.id);
      if (p) {
        this.settle(p, msg);
        return;
      }
      for (const room of this.rooms.values()) {
        if (room.joinId === msg.id) {
          room._failed(new RoomcastError(msg.code, msg.message, msg.id));
          this.flushOutbox(room.name); // let queued publishes get their own errors
          return;
        }
      }
    }
    this.emit('error', new RoomcastError(msg.code, msg.message, msg.id));
  }

  private onWelcome(msg: WelcomeMsg): void {
    if (this.welcomed) {
      // A second welcome on the same connection answers an `auth` refresh: nothing to re-join.
      this._welcome = msg;
      this.scheduleTokenRefresh();
      return;
    }
    this._welcome = msg;
    this.welcomed = true;
    this.wsEverWelcomed = true;
    this.wsFailures = 0;
    this.attempt = 0;
    this.tokenRetried = false;
    this.setState('connected');
    this.emit('connected', msg);
    this.startHeartbeat(msg.heartbeat);
    this.scheduleTokenRefresh();
    for (const room of this.rooms.values()) this.transport!.send(room._joinCommand(this.nextId()));
    // Direct sends and publishes to rooms not joined go now; room publishes after their `joined`.
    this.flushOutbox();
  }

  private fetchMembers(room: Room<any>): void {
    this.presence(room.name).then(
      (p) => {
        if (this.rooms.get(room.name) === room) room._setMembers(p.members ?? []);
      },
      () => {
        /* presence is best effort; member events still arrive */
      },
    );
  }

  /** The transport closed (or failed to open): decide between reconnecting and giving up. */
  private handleClose(code: number, reason: string): void {
    const wasWebSocket = this._transportKind === 'websocket';
    const reachedWelcome = this.welcomed;
    this.teardownTransport();
    this.connectSeq++;
    reason = reason || describeCloseCode(code);
    for (const room of this.rooms.values()) room._disconnected();
    for (const p of [...this.pending.values()]) {
      if (p.outbox) {
        if (p.timer) clearTimeout(p.timer);
        p.timer = undefined;
        p.sent = false;
      } else {
        this.settle(p, new RoomcastError('disconnected', `connection lost (${code})`, p.id));
      }
    }
    if (wasWebSocket && !reachedWelcome) this.wsFailures++;

    if (code === CloseCodes.INVALID_TOKEN) {
      if (typeof this.o.token === 'function' && !this.tokenRetried) {
        this.tokenRetried = true;
        this.emit('disconnected', { code, reason, willReconnect: true });
        this.setState('reconnecting');
        this.emit('reconnecting', { attempt: this.attempt, delayMs: 0, code, reason });
        this.reconnectTimer = setTimeout(() => this.openTransport(), 0);
        return;
      }
      this.giveUp(code, reason);
      return;
    }
    const r = this.o.reconnect;
    if (r === false) {
      this.giveUp(code, reason);
      return;
    }
    const maxAttempts = r?.maxAttempts ?? Infinity;
    if (this.attempt >= maxAttempts) {
      this.giveUp(code, reason);
      return;
    }
    if (this.offline) {
      this.setState('disconnected');
      this.emit('disconnected', { code, reason, willReconnect: true });
      return;
    }
    this.emit('disconnected', { code, reason, willReconnect: true });
    this.maybeFallBack();
    const throttle = THROTTLE_CODES.has(code);
    const baseMs = r?.baseMs ?? 500;
    const capMs = r?.capMs ?? 30_000;
    const delay = throttle
      ? backoffDelay(Math.max(this.attempt, 3), baseMs, capMs, this.random, 0.5)
      : backoffDelay(this.attempt, baseMs, capMs, this.random);
    this.attempt++;
    this.setState('reconnecting');
    this.emit('reconnecting', { attempt: this.attempt, delayMs: delay, code, reason });
    this.reconnectTimer = setTimeout(() => this.openTransport(), delay);
  }

  private maybeFallBack(): void {
    if (this.o.transport && this.o.transport !== 'auto') return;
    if (this._transportKind !== 'websocket' || this.wsEverWelcomed) return;
    if (this.wsFailures < this.o.fallbackAfter) return;
    const g = globalThis as { EventSource?: unknown; fetch?: unknown };
    if (!(this.o.EventSource ?? g.EventSource) || !(this.o.fetch ?? g.fetch)) return;
    this._transportKind = 'http';
    this.attempt = 0;
    this.emit('transport', 'http');
  }

  private giveUp(code: number, reason: string): void {
    this.clearReconnect();
    this.setState('closed');
    this.emit('disconnected', { code, reason, willReconnect: false });
    this.emit('closed', { code, reason });
    this.rejectAll('closed', `connection closed: ${reason}`);
  }

  private teardownTransport(code = 1000, reason = '', onClosed?: (code: number, reason: string) => void): void {
    this.stopHeartbeat();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    const t = this.transport;
    this.transport = undefined;
    this._welcome = undefined;
    t?.close(code, reason, onClosed);
  }

  private clearReconnect(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
  }

  // ---- network awareness ---------------------------------------------------------------

  private onOffline(): void {
    this.offline = true;
    if (this._state === 'closed' || (this._state === 'disconnected' && !this.transport)) return;
    this.clearReconnect();
    if (this.transport || this._state === 'connecting') {
      this.teardownTransport(1000, 'offline');
      this.handleClose(1006, 'offline');
    } else {
      this.setState('disconnected');
    }
  }

  private onOnline(): void {
    this.offline = false;
    if (this._state === 'disconnected' || this._state === 'reconnecting') {
      // The network is back: try at once, without waiting for the backoff.
      this.attempt = 0;
      this.openTransport();
    }
  }

  // ---- heartbeat -----------------------------------------------------------------------

  private startHeartbeat(serverSeconds: number): void {
    this.stopHeartbeat();
    const h = this.o.heartbeat;
    if (h === false) return;
    const interval = h?.intervalMs ?? (serverSeconds > 0 ? serverSeconds * 1000 : 25_000);
    const timeout = h?.timeoutMs ?? Math.min(interval, 10_000);
    const tick = () => {
      if (!this.transport || this._state !== 'connected') return;
      this.transport.send({ type: 'ping', id: `hb-${++this.pingSeq}` });
      this.clearPongTimer();
      this.pongTimer = setTimeout(() => this.onHeartbeatTimeout(), timeout);
      this.heartbeatTimer = setTimeout(tick, interval);
    };
    this.heartbeatTimer = setTimeout(tick, interval);
  }

  private onHeartbeatTimeout(): void {
    this.pongTimer = undefined;
    if (!this.transport) return;
    this.teardownTransport(HEARTBEAT_TIMEOUT, 'heartbeat timeout');
    this.handleClose(HEARTBEAT_TIMEOUT, 'heartbeat timeout');
  }

  private clearPongTimer(): void {
    if (this.pongTimer) clearTimeout(this.pongTimer);
    this.pongTimer = undefined;
  }

  private stopHeartbeat(): void {
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    this.clearPongTimer();
  }

  // ---- token refresh -------------------------------------------------------------------

  private scheduleTokenRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (typeof this.o.token !== 'function' || this.tokenExp === undefined) return;
    if (this._welcome?.auth === 'none') return;
    const now = Date.now();
    const expMs = this.tokenExp * 1000;
    const lifetime = Math.max(0, expMs - now);
    const margin = Math.min(this.o.tokenRefreshMarginMs, lifetime / 2);
    const delay = Math.max(1000, expMs - now - margin);
    this.refreshTimer = setTimeout(() => void this.refreshToken(), delay);
  }

  private async refreshToken(): Promise<void> {
    this.refreshTimer = undefined;
    const t = this.o.token;
    if (typeof t !== 'function' || !this.transport) return;
    const transport = this.transport;
    let token: string;
    try {
      token = await t();
    } catch (err) {
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      if (this.transport === transport) this.refreshTimer = setTimeout(() => void this.refreshToken(), 5_000);
      return;
    }
    if (this.transport !== transport) return;
    this.currentToken = token;
    if (transport instanceof HttpTransport) {
      transport.setToken(token);
      this.tokenExp = jwtExp(token);
      this.emit('token', this.tokenExp === undefined ? {} : { exp: this.tokenExp });
      this.scheduleTokenRefresh();
    } else {
      // The reply is `auth_ok` {exp}, which schedules the next refresh.
      transport.send({ type: 'auth', token });
    }
  }
}
