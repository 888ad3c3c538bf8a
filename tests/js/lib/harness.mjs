// Per-file test harness: one plume server per test file, clients that are
// cleaned up after every test, and failure output that includes the server
// log and the raw frame transcripts of the clients used by the failing test.

import { after, afterEach, before, it } from "node:test";
import { startServer } from "./server.mjs";
import { signJwt, withToken } from "./auth.mjs";
import { DEFAULT_WAIT_MS, RawClient, createClient, waitForOpen, withTimeout } from "./client.mjs";

export const DEFAULT_TEST_TIMEOUT_MS = 20_000;

/**
 * Registers before/after hooks for the current test file (or describe block)
 * and returns a handle:
 *
 *   const h = usePlume();
 *   h.test("does X", async () => { const a = await h.connect(); ... });
 */
export function usePlume(serverOptions = {}) {
  const h = {
    /** @type {import("./server.mjs").PlumeServer | null} */
    server: null,
    /** Why the server could not be started, if it could not. */
    startError: null,
    _clients: [],
    _raw: [],
    /** A valid connect token (user "test-user"), sent as the `token` param by default. */
    token: signJwt("test-user"),

    /** A valid connect token for another user id. */
    tokenFor(sub) {
      return signJwt(sub);
    },

    /** The params the server should report for a default client: token, extras, vsn. */
    params(extra = {}, vsn = "2.0.0") {
      return { token: h.token, ...extra, vsn };
    },

    /** Query string for raw clients: `token=<jwt>&<query>` unless it names a token. */
    query(query = "vsn=2.0.0") {
      return /(^|&)token=/.test(query) ? query : `token=${h.token}${query ? `&${query}` : ""}`;
    },

    get url() {
      if (!h.server) throw new Error("plume server is not running (see the before hook error)");
      return h.server.url;
    },

    /**
     * Creates a phoenix.js client (not connected). The default token is added
     * to its params unless they name one or `auth: false` is given.
     */
    client({ auth = true, ...opts } = {}) {
      if (auth) opts.params = withToken(opts.params, h.token);
      const client = createClient(h.url, { label: `S${h._clients.length + 1}`, ...opts });
      h._clients.push(client);
      return client;
    },

    /** Creates a phoenix.js client, connects it and waits for the socket to open. */
    async connect(opts = {}) {
      const client = h.client(opts);
      client.socket.connect();
      await waitForOpen(client.socket);
      return client;
    },

    /** Opens a raw `ws` connection to /socket/websocket?token=<jwt>&<query>. */
    async raw(query = "vsn=2.0.0", opts = {}) {
      const client = h.rawUnopened(query, opts);
      await withTimeout(client.opened, DEFAULT_WAIT_MS, `raw connect to ${client.url}`);
      return client;
    },

    /** Creates a raw client without waiting for the handshake (for refusals). */
    rawUnopened(query, { auth = true, ...opts } = {}) {
      const q = auth ? h.query(query) : query;
      const client = new RawClient(h.server.wsUrl(q), { label: `R${h._raw.length + 1}`, ...opts });
      h._raw.push(client);
      return client;
    },

    async cleanup() {
      const clients = h._clients.splice(0);
      const raws = h._raw.splice(0);
      for (const r of raws) r.close();
      await Promise.all(
        clients.map(
          (c) =>
            new Promise((resolve) => {
              const timer = setTimeout(resolve, 1_000);
              try {
                c.socket.disconnect(() => {
                  clearTimeout(timer);
                  resolve();
                });
              } catch {
                clearTimeout(timer);
                resolve();
              }
            }),
        ),
      );
      // Drop any transport that is still around (e.g. a reconnect in flight).
      for (const c of clients) for (const ws of c.rec.transports) ws.terminate();
    },

    /** Text appended to failures: server log tail and client transcripts. */
    diagnostics() {
      const parts = [];
      for (const c of h._clients) {
        parts.push(`--- phoenix.js client ${c.label} frames ---\n${c.rec.dump() || "(none)"}`);
        if (c.logs.length) parts.push(`--- phoenix.js client ${c.label} log ---\n${c.logs.slice(-40).join("\n")}`);
      }
      for (const r of h._raw) parts.push(`--- raw client ${r.rec.label} frames ---\n${r.rec.dump() || "(none)"}`);
      parts.push(`--- plume server output (tail) ---\n${h.server ? h.server.tail(80) : "(server not started)"}`);
      return parts.join("\n");
    },

    /**
     * Defines a test. On failure the error is re-thrown with the
     * diagnostics appended, so the report shows what the server did.
     */
    test(name, fn, opts = {}) {
      return it(name, { timeout: DEFAULT_TEST_TIMEOUT_MS, ...opts }, async (t) => {
        if (h.startError) throw h.startError;
        try {
          await fn(t);
        } catch (err) {
          const diag = h.diagnostics();
          if (err && typeof err === "object") {
            try {
              err.stack = `${err.stack ?? err.message}\n\n${diag}`;
            } catch {
              // non-writable stack: fall through and wrap instead
              throw new Error(`${String(err)}\n\n${diag}`, { cause: err });
            }
            throw err;
          }
          throw new Error(`${String(err)}\n\n${diag}`);
        }
      });
    },
  };

  before(async () => {
    // A start failure (e.g. the binary is missing) is re-thrown by every test,
    // so each one is reported as failed with the reason instead of cancelled.
    try {
      h.server = await startServer(serverOptions);
    } catch (err) {
      h.startError = err;
    }
  });
  afterEach(async () => {
    await h.cleanup();
  });
  after(async () => {
    await h.cleanup();
    if (h.server) await h.server.stop();
  });
  return h;
}
