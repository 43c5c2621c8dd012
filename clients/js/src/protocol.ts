/**
 * Wire types of the roomcast protocol, version 1 (see docs/protocol.md, sections 3 and 4).
 * Unknown fields are ignored by both sides, so every interface here is open.
 */

export interface Since {
  offset: number;
  epoch: string | number;
}

// ---- client to server -------------------------------------------------------

export interface AuthCmd { type: 'auth'; token: string }
export interface JoinCmd {
  type: 'join';
  room: string;
  history?: number;
  since?: Since;
  id?: string;
  /** false: receive none of the room's member events (member_joined, member_left, member_count). */
  member_events?: boolean;
}
export interface LeaveCmd { type: 'leave'; room: string; id?: string }
export interface PublishCmd {
  type: 'publish';
  room: string;
  event: string;
  data: unknown;
  id?: string;
  volatile?: boolean;
  echo?: boolean;
}
export interface SendCmd { type: 'send'; to: string; event: string; data: unknown; id?: string }
export interface PresenceCmd { type: 'presence'; room: string; id?: string; limit?: number }
export interface PingCmd { type: 'ping'; id?: string }

export type ClientMessage = AuthCmd | JoinCmd | LeaveCmd | PublishCmd | SendCmd | PresenceCmd | PingCmd;

// ---- server to client -------------------------------------------------------

export interface WelcomeMsg {
  type: 'welcome';
  session: string;
  node: string;
  user: string;
  /** Seconds between the server's WebSocket pings. */
  heartbeat: number;
  auth: string;
}

/** A room message, as delivered in `message` frames, `joined.messages` and SSE `data:`. */
export interface RoomMessage<D = unknown, E extends string = string> {
  type?: 'message';
  room: string;
  event: E;
  data: D;
  from: string;
  /** Absent for volatile messages and for messages written to the bus by a backend emitter. */
  offset?: number;
  ts: number;
}

export interface DirectMessage<D = unknown, E extends string = string> {
  type: 'direct';
  from: string;
  event: E;
  data: D;
  ts: number;
}

export interface JoinedMsg {
  type: 'joined';
  room: string;
  offset: number;
  epoch: string | number;
  recovered: boolean;
  messages: RoomMessage[];
  id?: string;
}

export interface LeftMsg { type: 'left'; room: string; id?: string }
export interface AckMsg { type: 'ack'; id: string; offset?: number }
export interface Member { user: string; connections: number }
export interface PresenceMsg {
  type: 'presence';
  room: string;
  members: Member[];
  count?: { users: number; connections: number };
  id?: string;
}
export interface PongMsg { type: 'pong'; id?: string }
export interface AuthOkMsg { type: 'auth_ok'; exp: number; id?: string }
export interface MemberEventMsg { type: 'member_joined' | 'member_left'; room: string; user: string }
/** A room over the server's `--member-events-max` users: its size instead of per-user events, at most once a second while it changes. */
export interface MemberCountMsg { type: 'member_count'; room: string; users: number; connections: number }

export type ErrorCode =
  | 'invalid_message'
  | 'unknown_type'
  | 'too_large'
  | 'rate_limited'
  | 'forbidden'
  | 'not_joined'
  | 'room_limit'
  | 'unavailable'
  | 'internal'
  | (string & {});

export interface ErrorMsg { type: 'error'; code: ErrorCode; message: string; id?: string; room?: string }

export type ServerMessage =
  | WelcomeMsg
  | (RoomMessage & { type: 'message' })
  | DirectMessage
  | JoinedMsg
  | LeftMsg
  | AckMsg
  | PresenceMsg
  | PongMsg
  | AuthOkMsg
  | MemberEventMsg
  | MemberCountMsg
  | ErrorMsg;

/** WebSocket close codes used by roomcast (docs/protocol.md section 4). */
export const CloseCodes = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  AUTH_TIMEOUT: 4001,
  INVALID_TOKEN: 4002,
  NOT_AUTHENTICATED: 4003,
  SLOW_CONSUMER: 4008,
  RATE_LIMIT_ABUSED: 4029,
} as const;

const closeReasons: Record<number, string> = {
  1000: 'normal closure',
  1001: 'node going away',
  1006: 'connection lost',
  1008: 'policy violation',
  1009: 'message too big',
  1011: 'internal server error',
  1013: 'server overloaded, try later',
  4000: 'heartbeat timeout',
  4001: 'authentication timeout',
  4002: 'invalid or expired token',
  4003: 'message before authentication',
  4008: 'slow consumer',
  4029: 'rate limit abused',
};

/** A human-readable description of a close code. */
export function describeCloseCode(code: number): string {
  return closeReasons[code] ?? `closed (${code})`;
}
