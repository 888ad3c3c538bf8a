// Client-side helpers: phoenix.js sockets on top of the `ws` package, a frame
// recorder that sees every raw WebSocket frame, a raw (non-phoenix.js)
// WebSocket client, and promise helpers with timeouts.

import { LongPoll, Socket } from "phoenix";
import WebSocket from "ws";

export { LongPoll, Socket, WebSocket };

export const DEFAULT_WAIT_MS = 5_000;

// ---------------------------------------------------------------------------
// small utilities

export const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Rejects with a descriptive error if `promise` does not settle in `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `predicate` until it returns a truthy value. */
export async function waitUntil(predicate, { timeout = DEFAULT_WAIT_MS, interval = 10, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await delay(interval);
  }
}

let uniqueCounter = 0;
/** A topic-safe unique suffix, so tests never share channel state. */
export function uniq(prefix = "t") {
  uniqueCounter += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${uniqueCounter}`;
}

/** ArrayBuffer holding exactly the given byte values. */
export function arrayBufferOf(bytes) {
  const u8 = Uint8Array.from(bytes);
  return u8.buffer.slice(u8.byteOffset, u8.byteOffset + u8.byteLength);
}

/** Copies any binary-ish value into a Buffer for comparisons. */
export function toBuffer(data) {
  if (Buffer.isBuffer(data)) return data;
  if (data instanceof ArrayBuffer) return Buffer.from(new Uint8Array(data));
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) return Buffer.concat(data.map(toBuffer));
  throw new TypeError(`not binary data: ${Object.prototype.toString.call(data)}`);
}

// ---------------------------------------------------------------------------
// V2 binary frame layout (see reference §2.4)

/** Bytes phoenix.js sends for a binary push (kind 0, 5-byte header). */
export function encodeClientPush({ joinRef, ref, topic, event, payload }) {
  const parts = [joinRef, ref, topic, event].map((s) => Buffer.from(s ?? "", "utf8"));
  return Buffer.concat([Buffer.from([0, ...parts.map((p) => p.length)]), ...parts, toBuffer(payload)]);
}

/** Bytes a server sends for a binary channel push (kind 0, 4-byte header, no ref). */
export function encodeServerPush({ joinRef, topic, event, payload }) {
  const parts = [joinRef, topic, event].map((s) => Buffer.from(s ?? "", "utf8"));
  return Buffer.concat([Buffer.from([0, ...parts.map((p) => p.length)]), ...parts, toBuffer(payload)]);
}

/** Bytes a server sends for a binary reply (kind 1). */
export function encodeReply({ joinRef, ref, topic, status, payload }) {
  const parts = [joinRef, ref, topic, status].map((s) => Buffer.from(s ?? "", "utf8"));
  return Buffer.concat([Buffer.from([1, ...parts.map((p) => p.length)]), ...parts, toBuffer(payload)]);
}

/** Bytes a server sends for a binary broadcast (kind 2). */
export function encodeBroadcast({ topic, event, payload }) {
  const parts = [topic, event].map((s) => Buffer.from(s ?? "", "utf8"));
  return Buffer.concat([Buffer.from([2, ...parts.map((p) => p.length)]), ...parts, toBuffer(payload)]);
}

/**
 * Decodes a binary frame. Client->server pushes have a 5-byte header,
 * server->client pushes a 4-byte one, so the direction matters.
 */
export function decodeBinaryFrame(buf, dir) {
  const b = toBuffer(buf);
  if (b.length === 0) return { kind: "empty" };
  const kind = b[0];
  const take = (lens, start) => {
    let off = start;
    const out = [];
    for (const len of lens) {
      out.push(b.subarray(off, off + len).toString("utf8"));
      off += len;
    }
    return { fields: out, rest: b.subarray(off) };
  };
  try {
    if (kind === 0 && dir === "out") {
      const { fields, rest } = take([b[1], b[2], b[3], b[4]], 5);
      const [joinRef, ref, topic, event] = fields;
      return { kind: "push", joinRef, ref, topic, event, payload: rest };
    }
    if (kind === 0) {
      const { fields, rest } = take([b[1], b[2], b[3]], 4);
      const [joinRef, topic, event] = fields;
      return { kind: "push", joinRef, ref: null, topic, event, payload: rest };
    }
    if (kind === 1) {
      const { fields, rest } = take([b[1], b[2], b[3], b[4]], 5);
      const [joinRef, ref, topic, status] = fields;
      return { kind: "reply", joinRef, ref, topic, status, event: "phx_reply", payload: rest };
    }
    if (kind === 2) {
      const { fields, rest } = take([b[1], b[2]], 3);
      const [topic, event] = fields;
      return { kind: "broadcast", joinRef: null, ref: null, topic, event, payload: rest };
    }
  } catch {
    // fall through
  }
  return { kind: `unknown(${kind})` };
}

// ---------------------------------------------------------------------------
// frame recorder

/**
 * Records everything that happens on the WebSocket(s) a phoenix.js Socket
 * creates: connects, opens (with the negotiated subprotocol), every frame in
 * both directions, errors and closes. `recorder.WebSocket` is the transport
 * class to hand to `new Socket(url, {transport})`.
 */
export class FrameRecorder {
  constructor(label = "client") {
    this.label = label;
    this.t0 = Date.now();
    /** @type {object[]} */
    this.entries = [];
    /** @type {WebSocket[]} every transport instance, in creation order */
    this.transports = [];
    this._waiters = new Set();
    this._class = null;
  }

  /** A `ws` subclass bound to this recorder. */
  get WebSocket() {
    if (this._class) return this._class;
    const rec = this;
    this._class = class RecordingWebSocket extends WebSocket {
      constructor(url, protocols, options) {
        super(url, protocols, options);
        rec._attach(this, url, protocols);
      }

      send(data, ...rest) {
        rec._frame(this, "out", data, typeof data !== "string");
        return super.send(data, ...rest);
      }
    };
    return this._class;
  }

  _attach(ws, url, protocols) {
    this.transports.push(ws);
    const conn = this.transports.length;
    ws._plumeConn = conn;
    this._push({ type: "connect", conn, url: String(url), protocols: protocols ?? null });
    ws.on("upgrade", (res) => {
      this._push({ type: "upgrade", conn, status: res.statusCode, protocol: res.headers["sec-websocket-protocol"] ?? null });
    });
    ws.on("open", () => this._push({ type: "open", conn, protocol: ws.protocol }));
    ws.on("message", (data, isBinary) => this._frame(ws, "in", data, isBinary));
    ws.on("error", (err) => this._push({ type: "error", conn, message: err.message }));
    ws.on("close", (code, reason) => this._push({ type: "close", conn, code, reason: reason.toString() }));
  }

  _frame(ws, dir, data, isBinary) {
    const entry = { type: "frame", conn: ws._plumeConn, dir, binary: !!isBinary };
    if (isBinary) {
      entry.bytes = Buffer.from(toBuffer(data)); // copy: the caller may reuse its buffer
      entry.frame = decodeBinaryFrame(entry.bytes, dir);
    } else {
      entry.text = typeof data === "string" ? data : toBuffer(data).toString("utf8");
      try {
        entry.frame = JSON.parse(entry.text);
      } catch {
        entry.frame = undefined;
      }
    }
    this._push(entry);
  }

  _push(entry) {
    entry.seq = this.entries.length;
    entry.t = Date.now() - this.t0;
    this.entries.push(entry);
    for (const waiter of [...this._waiters]) waiter(entry);
  }

  /** Frame entries (optionally only one direction: "in" or "out"). */
  frames(dir) {
    return this.entries.filter((e) => e.type === "frame" && (!dir || e.dir === dir));
  }

  /** Decoded JSON text frames (optionally one direction). */
  textFrames(dir) {
    return this.frames(dir)
      .filter((e) => !e.binary)
      .map((e) => e.frame);
  }

  /** Entries of the given lifecycle type ("connect", "open", "close", "error"). */
  events(type) {
    return this.entries.filter((e) => e.type === type);
  }

  /** Index to pass as `from` to only consider entries recorded after now. */
  mark() {
    return this.entries.length;
  }

  /** First existing entry from index `from` matching `predicate`. */
  find(predicate, from = 0) {
    for (let i = from; i < this.entries.length; i++) {
      if (predicate(this.entries[i])) return this.entries[i];
    }
    return undefined;
  }

  /** Resolves with the first entry (existing or future, from `from`) matching `predicate`. */
  waitFor(predicate, { from = 0, timeout = DEFAULT_WAIT_MS, what = "a matching frame" } = {}) {
    const existing = this.find(predicate, from);
    if (existing) return Promise.resolve(existing);
    return new Promise((resolve, reject) => {
      const waiter = (entry) => {
        if (entry.seq < from || !predicate(entry)) return;
        this._waiters.delete(waiter);
        clearTimeout(timer);
        resolve(entry);
      };
      const timer = setTimeout(() => {
        this._waiters.delete(waiter);
        reject(new Error(`[${this.label}] timed out after ${timeout} ms waiting for ${what}\n${this.dump()}`));
      }, timeout);
      this._waiters.add(waiter);
    });
  }

  /** Waits for an incoming/outgoing JSON text frame matching `pred(frameArray)`. */
  waitForText(dir, pred, opts = {}) {
    return this.waitFor((e) => e.type === "frame" && e.dir === dir && !e.binary && e.frame !== undefined && pred(e.frame), {
      what: `a ${dir} text frame`,
      ...opts,
    });
  }

  /** Waits for a binary frame in direction `dir` matching `pred(decoded, entry)`. */
  waitForBinary(dir, pred = () => true, opts = {}) {
    return this.waitFor((e) => e.type === "frame" && e.dir === dir && e.binary && pred(e.frame, e), {
      what: `a ${dir} binary frame`,
      ...opts,
    });
  }

  /** The recorded frames, one line each: `[+time] label#conn >> sent` / `<< received`. */
  dump() {
    const lines = this.entries.map((e) => {
      const ts = `[+${String(e.t).padStart(6)}ms] ${this.label}#${e.conn}`;
      switch (e.type) {
        case "frame": {
          const arrow = e.dir === "out" ? ">>" : "<<";
          const body = e.binary ? `<binary ${e.bytes.toString("hex")}>` : e.text;
          return `${ts} ${arrow} ${body}`;
        }
        case "connect":
          return `${ts} CONNECT ${e.url}${e.protocols ? ` protocols=${JSON.stringify(e.protocols)}` : ""}`;
        case "upgrade":
          return `${ts} HTTP ${e.status} upgrade protocol=${e.protocol}`;
        case "open":
          return `${ts} OPEN protocol=${JSON.stringify(e.protocol)}`;
        case "close":
          return `${ts} CLOSE code=${e.code} reason=${JSON.stringify(e.reason)}`;
        case "error":
          return `${ts} ERROR ${e.message}`;
        default:
          return `${ts} ${JSON.stringify(e)}`;
      }
    });
    return lines.join("\n");
  }
}

// ---------------------------------------------------------------------------
// phoenix.js sockets

/**
 * Builds a phoenix.js Socket using a recording `ws` transport.
 *
 * Options are passed to `new Socket()` when given: params, vsn, authToken,
 * heartbeatIntervalMs, reconnectAfterMs, rejoinAfterMs, timeout, logger.
 * `logger: true` collects phoenix.js log lines into `client.logs`.
 * `longpoll: true` uses phoenix.js's LongPoll transport (its HTTP requests are not
 * recorded; use `logger: true` for a trace); `longPollFallbackMs` and `sessionStorage`
 * are passed through for the WebSocket-to-LongPoll fallback.
 * Defaults differ from phoenix.js in two places to keep tests fast:
 * reconnectAfterMs = 50 ms and the push/join timeout = 5 s.
 */
export function createClient(url, opts = {}) {
  const label = opts.label ?? "client";
  const recorder = opts.recorder ?? new FrameRecorder(label);
  const logs = [];
  const socketOpts = {
    transport: recorder.WebSocket,
    timeout: opts.timeout ?? 5_000,
    reconnectAfterMs: opts.reconnectAfterMs ?? (() => 50),
  };
  if (opts.longpoll) socketOpts.transport = LongPoll;
  for (const key of ["params", "vsn", "authToken", "heartbeatIntervalMs", "rejoinAfterMs", "longPollFallbackMs", "sessionStorage"]) {
    if (opts[key] !== undefined) socketOpts[key] = opts[key];
  }
  if (opts.logger === true) {
    socketOpts.logger = (kind, msg, data) => {
      let extra = "";
      try {
        extra = data === undefined ? "" : ` ${JSON.stringify(data)}`;
      } catch {
        extra = " <unserializable>";
      }
      logs.push(`${kind}: ${msg}${extra}`);
    };
  } else if (typeof opts.logger === "function") {
    socketOpts.logger = opts.logger;
  }
  const socket = new Socket(url, socketOpts);
  return { label, socket, rec: recorder, logs };
}

/** Resolves when the socket is open (immediately if it already is). */
export function waitForOpen(socket, timeout = DEFAULT_WAIT_MS) {
  if (socket.isConnected()) return Promise.resolve();
  let ref;
  const p = new Promise((resolve) => {
    ref = socket.onOpen(() => resolve());
  });
  return withTimeout(p, timeout, "the socket to open").finally(() => socket.off([ref]));
}

/** Resolves with the next close event of the socket's transport. */
export function waitForSocketClose(socket, timeout = DEFAULT_WAIT_MS) {
  let ref;
  const p = new Promise((resolve) => {
    ref = socket.onClose((event) => resolve(event));
  });
  return withTimeout(p, timeout, "the socket to close").finally(() => socket.off([ref]));
}

/** Waits for the first reply hook ("ok", "error" or "timeout") of a Push. */
export function receiveAny(push, timeout = DEFAULT_WAIT_MS, what = "a reply") {
  const p = new Promise((resolve) => {
    push
      .receive("ok", (response) => resolve({ status: "ok", response }))
      .receive("error", (response) => resolve({ status: "error", response }))
      .receive("timeout", (response) => resolve({ status: "timeout", response }));
  });
  return withTimeout(p, timeout, what);
}

/** Joins `channel` and resolves with `{status, response}` of the first join reply. */
export function join(channel, timeout = DEFAULT_WAIT_MS) {
  return receiveAny(channel.join(), timeout, `the join reply for ${channel.topic}`);
}

/** Joins and requires an "ok" reply; resolves with the response. */
export async function joinOk(channel, timeout = DEFAULT_WAIT_MS) {
  const result = await join(channel, timeout);
  if (result.status !== "ok") {
    throw new Error(`join of ${channel.topic} was not ok: ${JSON.stringify(result)}`);
  }
  return result.response;
}

/** Pushes `event` and resolves with `{status, response}` of its reply. */
export function pushAndReceive(channel, event, payload, timeout = DEFAULT_WAIT_MS) {
  return receiveAny(channel.push(event, payload, timeout + 1_000), timeout, `the reply to "${event}" on ${channel.topic}`);
}

/** Resolves with `{payload, ref, joinRef}` of the next `event` delivered to `channel`. */
export function waitForEvent(channel, event, { timeout = DEFAULT_WAIT_MS, filter = () => true } = {}) {
  let bindRef;
  const p = new Promise((resolve) => {
    bindRef = channel.on(event, (payload, ref, joinRef) => {
      if (filter(payload)) resolve({ payload, ref, joinRef });
    });
  });
  return withTimeout(p, timeout, `event "${event}" on ${channel.topic}`).finally(() => channel.off(event, bindRef));
}

/** Collects every `event` delivered to `channel` until `stop()` is called. */
export function collectEvents(channel, event) {
  const seen = [];
  const bindRef = channel.on(event, (payload, ref, joinRef) => seen.push({ payload, ref, joinRef }));
  seen.stop = () => channel.off(event, bindRef);
  return seen;
}

/** Sends an arbitrary message through the socket, bypassing channel state. */
export function pushRaw(socket, { topic, event, payload = {}, joinRef = null }) {
  const ref = socket.makeRef();
  socket.push({ topic, event, payload, ref, join_ref: joinRef });
  return ref;
}

// ---------------------------------------------------------------------------
// raw WebSocket client (for V1, handshake refusals and exact frame scripts)

export class RawClient {
  constructor(url, { protocols, headers, label = "raw" } = {}) {
    this.url = url;
    this.rec = new FrameRecorder(label);
    this.ws = new this.rec.WebSocket(url, protocols, { headers });
    this.ws.binaryType = "nodebuffer";
    this._cursor = 0;
    this.response = null;
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", () => resolve());
      this.ws.once("unexpected-response", (_req, res) => {
        this.response = { status: res.statusCode, headers: res.headers };
        const err = new Error(`unexpected-response: HTTP ${res.statusCode}`);
        err.status = res.statusCode;
        err.headers = res.headers;
        res.resume();
        this.ws.terminate();
        reject(err);
      });
      this.ws.once("error", (err) => reject(err));
    });
    // Nobody may await `opened` for refused connections; avoid unhandled rejections.
    this.opened.catch(() => {});
  }

  /** Opens and resolves with this client. */
  static async connect(url, opts) {
    const c = new RawClient(url, opts);
    await withTimeout(c.opened, DEFAULT_WAIT_MS, `raw connect to ${url}`);
    return c;
  }

  /** Sends a value: strings as-is, Buffers as binary, anything else JSON-encoded. */
  send(value) {
    if (typeof value === "string" || Buffer.isBuffer(value)) this.ws.send(value);
    else this.ws.send(JSON.stringify(value));
  }

  /** Next incoming frame entry not yet consumed by `next()`. */
  async next(timeout = DEFAULT_WAIT_MS) {
    const entry = await this.rec.waitFor((e) => e.type === "frame" && e.dir === "in", {
      from: this._cursor,
      timeout,
      what: "the next incoming frame",
    });
    this._cursor = entry.seq + 1;
    return entry;
  }

  /** Next `n` incoming frames. */
  async nextN(n, timeout = DEFAULT_WAIT_MS) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await this.next(timeout));
    return out;
  }

  /** Resolves with the close entry of the connection. */
  closed(timeout = DEFAULT_WAIT_MS) {
    return this.rec.waitFor((e) => e.type === "close", { timeout, what: "the connection to close" });
  }

  close() {
    try {
      this.ws.terminate();
    } catch {
      // already closed
    }
  }
}
