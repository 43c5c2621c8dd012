/** Codes of errors raised by the client itself, in addition to the server's error codes. */
export type ClientErrorCode =
  | 'timeout'
  | 'disconnected'
  | 'closed'
  | 'outbox_full'
  | 'outbox_expired'
  | 'not_connected'
  | 'left'
  | 'http_error'
  | 'unauthorized';

/** An error settling a request: a server `error` reply, or one of the client's own codes. */
export class RoomcastError extends Error {
  readonly code: string;
  readonly id?: string;
  constructor(code: string, message: string, id?: string) {
    super(message);
    this.name = 'RoomcastError';
    this.code = code;
    if (id !== undefined) this.id = id;
  }
}
