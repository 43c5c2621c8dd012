import type { ClientMessage, ServerMessage } from './protocol.js';

/** How frames are encoded on the WebSocket. */
export interface Codec {
  /** The WebSocket subprotocol offered to the server. */
  readonly subprotocol: string;
  /** True when frames are binary. */
  readonly binary: boolean;
  encode(msg: ClientMessage): string | Uint8Array;
  decode(data: unknown): ServerMessage;
}

function toText(data: unknown): string {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(data);
  if (ArrayBuffer.isView(data)) return new TextDecoder().decode(data as Uint8Array);
  return String(data);
}

/** The default codec: `roomcast.v1.json`, text frames. */
export const jsonCodec: Codec = {
  subprotocol: 'roomcast.v1.json',
  binary: false,
  encode: (msg) => JSON.stringify(msg),
  decode: (data) => JSON.parse(toText(data)) as ServerMessage,
};

/** The subset of `@msgpack/msgpack` that the client needs. */
export interface MsgpackModule {
  encode(value: unknown): Uint8Array;
  decode(buffer: ArrayLike<number> | ArrayBuffer | Uint8Array): unknown;
}

/**
 * A `roomcast.v1.msgpack` codec (binary frames) built from a MessagePack implementation,
 * normally `import * as msgpack from '@msgpack/msgpack'` (an optional peer dependency;
 * `roomcast-client/msgpack` exports one ready-made).
 */
export function createMsgpackCodec(mod: MsgpackModule): Codec {
  return {
    subprotocol: 'roomcast.v1.msgpack',
    binary: true,
    encode: (msg) => mod.encode(msg),
    decode: (data) => {
      if (typeof data === 'string') return JSON.parse(data) as ServerMessage;
      let bytes: Uint8Array;
      if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
      else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      else throw new TypeError('msgpack codec: unexpected frame type');
      return normalize(mod.decode(bytes)) as ServerMessage;
    },
  };
}

// MessagePack may decode 64-bit integers as bigint (when configured); offsets are numbers here.
function normalize(v: unknown): unknown {
  if (typeof v === 'bigint') return Number(v);
  if (Array.isArray(v)) return v.map(normalize);
  if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) out[k] = normalize(x);
    return out;
  }
  return v;
}
