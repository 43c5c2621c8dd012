export { RoomcastClient, httpBaseFromWsUrl } from './client.js';
export type {
  ClientOptions,
  ClientEvents,
  ConnectionState,
  DirectMessageOf,
  DisconnectInfo,
  HeartbeatOptions,
  NetworkMonitor,
  TokenCallback,
  TransportKind,
} from './client.js';
export { Room } from './room.js';
export type {
  EventMap,
  GapEvent,
  JoinOptions,
  JoinedEvent,
  MemberCountEvent,
  PublishAck,
  PublishOptions,
  RecoveryFailedEvent,
  RoomEvents,
  RoomMessageOf,
  RoomState,
} from './room.js';
export { RoomcastError } from './errors.js';
export type { ClientErrorCode } from './errors.js';
export { jsonCodec, createMsgpackCodec } from './codec.js';
export type { Codec, MsgpackModule } from './codec.js';
export { backoffDelay, backoffCeiling } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { CloseCodes, describeCloseCode } from './protocol.js';
export type * from './protocol.js';
export type { WebSocketCtor, WebSocketLike, EventSourceCtor, EventSourceLike, FetchLike } from './transport.js';
