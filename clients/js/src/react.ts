import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useRef,
  useState,
  type ReactNode,
} from 'react';
import type { ConnectionState, RoomcastClient } from './client.js';
import type { Member } from './protocol.js';
import type { EventMap, JoinOptions, PublishAck, PublishOptions, Room, RoomMessageOf, RoomState } from './room.js';

const ClientContext = createContext<RoomcastClient<any> | null>(null);

export interface RoomcastProviderProps {
  client: RoomcastClient<any>;
  children?: ReactNode;
}

/** Makes a client available to `useRoom`, `useRoomcast` and `useConnectionState` below it. */
export function RoomcastProvider({ client, children }: RoomcastProviderProps) {
  return createElement(ClientContext.Provider, { value: client }, children);
}

/** The client of the nearest `RoomcastProvider`. */
export function useRoomcast<D extends EventMap = EventMap>(): RoomcastClient<D> {
  const client = useContext(ClientContext);
  if (!client) throw new Error('useRoomcast/useRoom must be used inside <RoomcastProvider client={...}>');
  return client as RoomcastClient<D>;
}

/** The client's connection state, re-rendering on every change. */
export function useConnectionState(): ConnectionState {
  const client = useRoomcast();
  const [state, setState] = useState<ConnectionState>(client.state);
  useEffect(() => {
    setState(client.state);
    return client.on('state', (s) => setState(s));
  }, [client]);
  return state;
}

// Several components may use one room: leave it when the last one unmounts.
const users = new WeakMap<RoomcastClient<any>, Map<string, number>>();
function acquire(client: RoomcastClient<any>, name: string): void {
  let m = users.get(client);
  if (!m) users.set(client, (m = new Map()));
  m.set(name, (m.get(name) ?? 0) + 1);
}
function release(client: RoomcastClient<any>, name: string): number {
  const m = users.get(client);
  const n = (m?.get(name) ?? 1) - 1;
  if (n <= 0) m?.delete(name);
  else m!.set(name, n);
  return n;
}

export interface UseRoomOptions extends JoinOptions {
  /** Most messages kept in `messages` (default 200). */
  maxMessages?: number;
}

export interface UseRoomResult<E extends EventMap> {
  room: Room<E> | null;
  /** Messages received since mounting (history first when asked for), oldest first. Replaced by the server's recent history when recovery fails. */
  messages: RoomMessageOf<E>[];
  /** Members of the room (presence, then member events). */
  members: Member[];
  publish<K extends keyof E & string>(event: K, data: E[K], opts?: PublishOptions): Promise<PublishAck>;
  publishVolatile<K extends keyof E & string>(event: K, data: E[K]): boolean;
  /** The connection state. */
  state: ConnectionState;
  /** The room's own state: joining, joined, failed, left. */
  roomState: RoomState;
}

/** Join a room for the lifetime of the component. */
export function useRoom<E extends EventMap = EventMap>(name: string, opts: UseRoomOptions = {}): UseRoomResult<E> {
  const client = useRoomcast();
  const state = useConnectionState();
  const [room, setRoom] = useState<Room<E> | null>(null);
  const [messages, setMessages] = useState<RoomMessageOf<E>[]>([]);
  const [members, setMembers] = useState<Member[]>([]);
  const [roomState, setRoomState] = useState<RoomState>('joining');
  const roomRef = useRef<Room<E> | null>(null);
  const max = opts.maxMessages ?? 200;
  const optsRef = useRef(opts);
  optsRef.current = opts;

  useEffect(() => {
    const { maxMessages: _m, ...joinOpts } = optsRef.current;
    void _m;
    const r = client.join<E>(name, { presence: true, ...joinOpts });
    acquire(client, name);
    roomRef.current = r;
    setRoom(r);
    setRoomState(r.state);
    setMembers(r.members);
    setMessages([]);
    const offs = [
      r.on('message', (m) => setMessages((prev) => (prev.length >= max ? [...prev.slice(prev.length - max + 1), m] : [...prev, m]))),
      r.on('recovery_failed', (ev) => setMessages(ev.messages.slice(-max))),
      r.on('members', (ms) => setMembers(ms)),
      r.on('state', (s) => setRoomState(s)),
    ];
    return () => {
      for (const off of offs) off();
      roomRef.current = null;
      if (release(client, name) === 0) void r.leave();
    };
  }, [client, name, max]);

  const publish = useCallback(
    <K extends keyof E & string>(event: K, data: E[K], o?: PublishOptions) =>
      (roomRef.current ?? client.join<E>(name)).publish(event, data, o),
    [client, name],
  );
  const publishVolatile = useCallback(
    <K extends keyof E & string>(event: K, data: E[K]) => roomRef.current?.publishVolatile(event, data) ?? false,
    [],
  );
  return { room, messages, members, publish, publishVolatile, state, roomState };
}
