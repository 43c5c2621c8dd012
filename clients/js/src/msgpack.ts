import { decode, encode } from '@msgpack/msgpack';
import { createMsgpackCodec } from './codec.js';

/** The `roomcast.v1.msgpack` codec using `@msgpack/msgpack` (install it; it is an optional peer dependency). */
export const msgpackCodec = createMsgpackCodec({ encode: (v) => encode(v), decode: (b) => decode(b) });
