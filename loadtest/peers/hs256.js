// HS256 tokens for the peers, as a node checks them (loadtest/joins/run --auth jwt):
// with JWT_SECRET set, a connection must carry a token signed with it whose `sub` is
// the user; an expired or badly signed token is refused. Node's crypto only, so the
// peers keep their dependencies.
'use strict';
const crypto = require('crypto');

const secret = process.env.JWT_SECRET || '';

/** The token's `sub` when it is valid, else null; `undefined` when no secret is set. */
function userOf(token) {
  if (!secret) return undefined;
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch (_) {
    return null;
  }
  if (!header || header.alg !== 'HS256') return null;
  const mac = crypto.createHmac('sha256', secret).update(`${parts[0]}.${parts[1]}`).digest();
  const sig = Buffer.from(parts[2], 'base64url');
  if (sig.length !== mac.length || !crypto.timingSafeEqual(sig, mac)) return null;
  if (!claims || typeof claims.exp !== 'number' || claims.exp * 1000 < Date.now()) return null;
  return typeof claims.sub === 'string' ? claims.sub : null;
}

module.exports = { userOf };
