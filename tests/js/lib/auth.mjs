// Connect tokens for the suite.
//
// With the chat service wired in, `plume serve` accepts a connect only with a
// valid JWT (HS256 with the configured secret, `sub` and `exp` required), read
// from the `token` query param or from the phoenix.js authToken subprotocol.
// The harness starts the server with PLUME_JWT_SECRET=TEST_JWT_SECRET and
// passes a token signed here as the `token` param of every client, unless a
// test opts out. A server that accepts every connect just sees one more param.

import { createHmac, randomBytes } from "node:crypto";

/** Secret handed to the server under test; random per test process. */
export const TEST_JWT_SECRET = `plume-js-suite-${randomBytes(12).toString("hex")}`;

const b64url = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** Signs an HS256 JWT for `sub`, valid for `ttlSecs`. */
export function signJwt(sub, { ttlSecs = 3_600, secret = TEST_JWT_SECRET } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url({ sub, exp: now + ttlSecs, iat: now });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/**
 * Adds `token` to phoenix.js connect params (object or function), unless the
 * params already name a token.
 */
export function withToken(params, token) {
  if (params === undefined || params === null) return { token };
  if (typeof params === "function") {
    return () => {
      const p = params() ?? {};
      return "token" in p ? p : { token, ...p };
    };
  }
  return "token" in params ? params : { token, ...params };
}
