import { Emitter } from './emitter.js';
import type { JoinCmd, JoinedMsg, Member, PresenceMsg, RoomMessage, Since } from './protocol.js';

/** Map of a room's event names to the type of their `data`. */
export type EventMap = Record<string, unknown>;

/** A room message typed by an event map: a union discriminated by `event`. */
export type RoomMessageOf<E extends EventMap> = {
  [K in keyof E & string]: RoomMessage<E[K], K>;
}[keyof E & string];

export type RoomState = 'joining' | 'joined' | 'failed' | 'left';

export interface JoinOptions {
  /** Ask for the n most recent messages on the first join (and again when recovery fails). */
  history?: number;
  /** Resume from a position saved in an earlier session. */
  since?: Since;
  /** Keep `room.members` up to date (a presence request after every join, then member events). */
  presence?: boolean;
  /**
   * Receive the room's member events (`member_joined`, `member_left`, `member_count`); default
   * true. `false` saves a frame per join and leave of anyone in the room: for large rooms whose
   * member list the application does not show.
   */
  memberEvents?: boolean;
}

/** How many are in a room that reports its size instead of each join and leave. */
export interface MemberCountEvent {
  room: string;
  users: number;
  connections: number;
}

export interface PublishOptions {
  /** Deliver to the sender too (default false, as on the server). */
  echo?: boolean;
  /** No history, may be dropped; the promise settles on the ack but the message is not kept across reconnects. */
  volatile?: boolean;
  /** Override the client's ack timeout for this message. */
  timeoutMs?: number;
}

export interface PublishAck {
  id: string;
  offset?: number;
}

export interface JoinedEvent<E extends EventMap = EventMap> {
  room: string;
  epoch: string | number;
  offset: number;
  /** True when the join asked to resume (`since`) and the server replayed everything missed. */
  recovered: boolean;
  /** True when the join carried `since`. */
  wasRecovering: boolean;
  messages: RoomMessageOf<E>[];
}

export interface RecoveryFailedEvent<E extends EventMap = EventMap> {
  room: string;
  previousEpoch?: string | number;
  epoch: string | number;
  /** The offset last seen before the gap. */
  lastOffset?: number;
  /** The recent history the server sent with the join (up to `history` messages): the state to reload from. */
  messages: RoomMessageOf<E>[];
}

/**
 * A live message skipped offsets: the client holds it back, re-joins the room with `since` (the
 * last offset delivered and its epoch) and delivers what the server replays, in order, before
 * it. The node repairs its own gaps first; this is the client's second line of defence.
 */
export interface GapEvent {
  room: string;
  epoch?: string | number;
  /** The last offset delivered. */
  lastOffset: number;
  /** The offset that arrived instead of `lastOffset + 1`. */
  offset: number;
}

export type RoomEvents<E extends EventMap> = {
  message: [RoomMessageOf<E>];
  joined: [JoinedEvent<E>];
  recovery_failed: [RecoveryFailedEvent<E>];
  /** A gap in the live offsets: the room is being re-joined with `since` (a `joined` follows). */
  gap: [GapEvent];
  member_joined: [{ room: string; user: string }];
  member_left: [{ room: string; user: string }];
  /**
   * The room has more users than the server's `--member-events-max` (default 1000): it sends
   * no `member_joined` / `member_left` but its size, cluster-wide, at most once a second while
   * it changes.
   */
  member_count: [MemberCountEvent];
  members: [Member[]];
  state: [RoomState];
  error: [Error];
  left: [];
};

/** What a room needs from its client. @internal */
export interface RoomHost {
  _roomJoinNeeded(room: Room<any>): void;
  _roomLeave(room: Room<any>): Promise<void>;
  _roomPublish(room: Room<any>, event: string, data: unknown, opts: PublishOptions): Promise<PublishAck>;
  _roomPublishVolatile(room: Room<any>, event: string, data: unknown): boolean;
  _roomPresence(room: Room<any>, limit?: number): Promise<PresenceMsg>;
}

const MAX_BUFFER = 10_000;

/**
 * A room the client has joined. It survives reconnects: the client re-joins it with the last
 * position seen, delivers what was missed in offset order, and drops duplicates.
 */
export class Room<E extends EventMap = EventMap> extends Emitter<RoomEvents<E>> {
  readonly name: string;
  private _state: RoomState = 'joining';
  /** Offset of the last message delivered (undefined before any). */
  private lastOffset?: number;
  private _epoch?: string | number;
  private sinceSent = false;
  private buffer: RoomMessage[] = [];
  private handlers = new Map<string, Set<(data: any, msg: any) => void>>();
  private _members = new Map<string, Member>();
  private _memberCount?: MemberCountEvent;
  /** Fallback transport: the next offset-bearing message is the first of a fresh stream. */
  private freshStream = false;
  private lastJoined?: JoinedEvent<E>;
  /**
   * Offsets of this client's own publishes acked without `echo`: the server does not send them
   * back, so the live offsets skip them without a gap.
   */
  private ownOffsets = new Set<number>();
  /** Own publishes (without echo) not acked yet: their offsets are unknown. */
  private ownInFlight = 0;
  /** Live messages held while a possible gap may be an own publish whose ack has not come. */
  private held: RoomMessage[] = [];
  /** @internal */
  joinId?: string;

  constructor(
    private host: RoomHost,
    name: string,
    readonly options: JoinOptions = {},
  ) {
    super();
    this.name = name;
    if (options.since) {
      this.lastOffset = options.since.offset;
      this._epoch = options.since.epoch;
    }
  }

  get state(): RoomState {
    return this._state;
  }

  /** The last position seen: save it to resume in a later session with `join(name, {since})`. */
  get position(): Since | undefined {
    if (this.lastOffset === undefined || this._epoch === undefined) return undefined;
    return { offset: this.lastOffset, epoch: this._epoch };
  }

  get offset(): number | undefined {
    return this.lastOffset;
  }

  get epoch(): string | number | undefined {
    return this._epoch;
  }

  /** The last `member_count` the room sent (only rooms over the server's `--member-events-max`). */
  get memberCount(): MemberCountEvent | undefined {
    return this._memberCount;
  }

  /** Members known from presence and member events (kept only with `presence: true`). */
  get members(): Member[] {
    return [...this._members.values()];
  }

  /** Listen to one application event with its typed data. */
  onEvent<K extends keyof E & string>(event: K, fn: (data: E[K], msg: RoomMessage<E[K], K>) => void): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(fn);
    return () => set!.delete(fn);
  }

  /** Publish; resolves with the ack ({id, offset}), rejects with a RoomcastError (server error, timeout, ...). */
  publish<K extends keyof E & string>(event: K, data: E[K], opts: PublishOptions = {}): Promise<PublishAck> {
    return this.host._roomPublish(this, event, data, opts);
  }

  /** Fire-and-forget volatile publish (typing indicators, cursors): false when not connected. */
  publishVolatile<K extends keyof E & string>(event: K, data: E[K]): boolean {
    return this.host._roomPublishVolatile(this, event, data);
  }

  /** Ask the cluster who is in the room. */
  presence(opts: { limit?: number } = {}): Promise<PresenceMsg> {
    return this.host._roomPresence(this, opts.limit);
  }

  /** Leave the room; the client stops re-joining it. */
  leave(): Promise<void> {
    return this.host._roomLeave(this);
  }

  /** Resolves when the room is joined: at once if it is, else on the next join (rejects if the join is refused). */
  ready(): Promise<JoinedEvent<E>> {
    if (this._state === 'joined' && this.lastJoined) return Promise.resolve(this.lastJoined);
    return new Promise((resolve, reject) => {
      const offJ = this.once('joined', (ev) => {
        offE();
        resolve(ev);
      });
      const offE = this.once('error', (err) => {
        offJ();
        reject(err);
      });
    });
  }

  // ---- used by the client -----------------------------------------------------------

  /** @internal */
  _joinCommand(id: string): JoinCmd {
    const cmd: JoinCmd = { type: 'join', room: this.name, id };
    if (this.options.history !== undefined) cmd.history = this.options.history;
    if (this.options.memberEvents === false) cmd.member_events = false;
    const pos = this.position;
    if (pos) cmd.since = pos;
    this.sinceSent = !!pos;
    this.joinId = id;
    return cmd;
  }

  /** Position to resume the event stream from (fallback transport). @internal */
  _sseRoom(): { room: string; offset?: number } {
    return this.lastOffset !== undefined ? { room: this.name, offset: this.lastOffset } : { room: this.name };
  }

  /** @internal */
  _setState(s: RoomState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit('state', s);
  }

  /** The connection dropped: the room will be re-joined. @internal */
  _disconnected(): void {
    if (this._state === 'left') return;
    this.buffer = [];
    this.held = [];
    this._setState('joining');
  }

  /** @internal */
  _handleJoined(msg: JoinedMsg, synthetic = false): void {
    if (this._state === 'left') return;
    const previousEpoch = this._epoch;
    const lastOffsetBefore = this.lastOffset;
    const wasRecovering = this.sinceSent;
    const epochChanged =
      previousEpoch !== undefined && msg.epoch !== undefined && String(previousEpoch) !== String(msg.epoch);
    // A new epoch numbers offsets afresh: the old floor means nothing any more.
    if (epochChanged) {
      this.lastOffset = undefined;
      this.ownOffsets.clear();
    }
    if (msg.epoch !== undefined) this._epoch = msg.epoch;
    this.freshStream = synthetic;
    const history = (msg.messages ?? []).map((m) => ({ ...m, room: m.room ?? this.name }));
    // Over the event stream (synthetic), the reopened stream replays everything after the
    // position it resumes from: what was held back from the old stream comes again.
    const withOffset = [...history, ...(synthetic ? [] : this.buffer)]
      .filter((m) => typeof m.offset === 'number')
      .sort((a, b) => a.offset! - b.offset!);
    const volatile = this.buffer.filter((m) => typeof m.offset !== 'number');
    this.buffer = [];
    this._setState('joined');
    for (const m of withOffset) this._deliver(m);
    if (typeof msg.offset === 'number' && !synthetic) {
      this.lastOffset = Math.max(this.lastOffset ?? 0, msg.offset);
    }
    const recovered = wasRecovering && !!msg.recovered && !epochChanged;
    if (wasRecovering && !recovered) {
      const ev: RecoveryFailedEvent<E> = {
        room: this.name,
        epoch: msg.epoch,
        messages: history as RoomMessageOf<E>[],
      };
      if (previousEpoch !== undefined) ev.previousEpoch = previousEpoch;
      if (lastOffsetBefore !== undefined) ev.lastOffset = lastOffsetBefore;
      this.emit('recovery_failed', ev);
    }
    this.lastJoined = {
      room: this.name,
      epoch: msg.epoch,
      offset: msg.offset,
      recovered,
      wasRecovering,
      messages: history as RoomMessageOf<E>[],
    };
    this.emit('joined', this.lastJoined);
    for (const m of volatile) this._deliver(m);
  }

  /** @internal */
  _handleMessage(msg: RoomMessage): void {
    if (this._state === 'left') return;
    if (this._state === 'joining') {
      if (this.buffer.length < MAX_BUFFER) this.buffer.push(msg);
      return;
    }
    if (this._state === 'joined') {
      if (this.held.length > 0) {
        this.held.push(msg);
        return;
      }
      if (this.skipsAhead(msg)) {
        // The missing offsets may be our own publish, acked any moment now: wait for its ack.
        if (this.ownInFlight > 0) this.held.push(msg);
        else this.repairGap(msg);
        return;
      }
    }
    this._deliver(msg);
  }

  /**
   * A live message whose offset is above the next one expected, our own publishes (which the
   * server does not send back) counted as seen. The first of a fresh event stream may be anything.
   */
  private skipsAhead(msg: RoomMessage): boolean {
    if (typeof msg.offset !== 'number' || this.freshStream || this.lastOffset === undefined) return false;
    let next = this.lastOffset + 1;
    while (this.ownOffsets.has(next)) next++;
    return msg.offset > next;
  }

  /** An own publish without echo was made (its ack will say its offset). @internal */
  _ownPublishStarted(): void {
    this.ownInFlight++;
  }

  /** An own publish without echo was acked (with its offset) or failed. @internal */
  _ownPublishSettled(offset?: number): void {
    this.ownInFlight = Math.max(0, this.ownInFlight - 1);
    if (offset !== undefined && (this.lastOffset === undefined || offset > this.lastOffset)) this.ownOffsets.add(offset);
    if (this.ownInFlight > 0 || this.held.length === 0) return;
    const held = this.held;
    this.held = [];
    for (const m of held) this._handleMessage(m);
  }

  /** Hold the message back and re-join with `since`: `_handleJoined` merges the replay with it, by offset. */
  private repairGap(msg: RoomMessage): void {
    const ev: GapEvent = { room: this.name, lastOffset: this.lastOffset!, offset: msg.offset! };
    if (this._epoch !== undefined) ev.epoch = this._epoch;
    this.buffer = [msg, ...this.held];
    this.held = [];
    this._setState('joining');
    this.emit('gap', ev);
    if (this._state !== 'joining') return; // the app left the room in its handler
    this.host._roomJoinNeeded(this);
  }

  private _deliver(msg: RoomMessage): void {
    if (typeof msg.offset === 'number' && this.ownOffsets.has(msg.offset)) {
      // Our own publish, replayed by a re-join: it was never delivered live (no echo), nor is it now.
      this.ownOffsets.delete(msg.offset);
      if (this.lastOffset === undefined || msg.offset > this.lastOffset) this.lastOffset = msg.offset;
      return;
    }
    if (typeof msg.offset === 'number') {
      if (this.lastOffset !== undefined && msg.offset <= this.lastOffset) {
        if (!this.freshStream) return; // duplicate
        // Over the event stream, a resumed room never repeats an offset: a smaller one means the
        // room's history was lost (new epoch), which the stream cannot say otherwise.
        const lastOffset = this.lastOffset;
        this.lastOffset = undefined;
        this.ownOffsets.clear();
        this.freshStream = false;
        const ev: RecoveryFailedEvent<E> = { room: this.name, epoch: this._epoch ?? 0, lastOffset, messages: [] };
        if (this._epoch !== undefined) ev.previousEpoch = this._epoch;
        this.emit('recovery_failed', ev);
      }
      this.freshStream = false;
      this.lastOffset = msg.offset;
      // Own offsets below this one were skipped for good: forget them.
      for (const o of this.ownOffsets) if (o < msg.offset) this.ownOffsets.delete(o);
    }
    const { type: _t, ...rest } = msg as RoomMessage & { type?: string };
    const clean = rest as RoomMessageOf<E>;
    this.emit('message', clean);
    const set = this.handlers.get(msg.event);
    if (set) {
      for (const fn of [...set]) {
        try {
          fn(msg.data, clean);
        } catch (err) {
          setTimeout(() => {
            throw err;
          }, 0);
        }
      }
    }
  }

  /** @internal */
  _handleMember(type: 'member_joined' | 'member_left', user: string): void {
    if (type === 'member_joined') {
      if (!this._members.has(user)) this._members.set(user, { user, connections: 1 });
      this.emit('member_joined', { room: this.name, user });
    } else {
      this._members.delete(user);
      this.emit('member_left', { room: this.name, user });
    }
    if (this.options.presence) this.emit('members', this.members);
  }

  /** @internal */
  _handleCount(users: number, connections: number): void {
    this._memberCount = { room: this.name, users, connections };
    this.emit('member_count', this._memberCount);
  }

  /** @internal */
  _setMembers(members: Member[]): void {
    this._members = new Map(members.map((m) => [m.user, m]));
    this.emit('members', this.members);
  }

  /** @internal */
  _failed(err: Error): void {
    this._setState('failed');
    this.emit('error', err);
  }

  /** @internal */
  _left(): void {
    this._setState('left');
    this.buffer = [];
    this.emit('left');
  }
}
