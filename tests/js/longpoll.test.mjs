// The LongPoll transport (/socket/longpoll) with the real phoenix.js client: the chat service
// over `transport: LongPoll`, LongPoll and WebSocket clients in one chat, the
// `longPollFallbackMs` fallback against a node that refuses WebSocket upgrades, restarts, and
// the HTTP contract itself request by request (protocol-spec/transport.md).

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { signJwt } from "./lib/auth.mjs";
import { api } from "./lib/cluster.mjs";
import { collectEvents, delay, joinOk, pushAndReceive, uniq, waitForEvent, waitUntil, withTimeout } from "./lib/client.mjs";

const API_KEY = "js-longpoll-api-key";
// A short poll window keeps the 204 and expiry cases quick (sessions end 1.5 s after the last poll).
const WINDOW_S = 1;

/** A Map-backed Storage, standing in for the browser's sessionStorage. */
function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k), m };
}

describe("LongPoll transport (single node)", () => {
  const h = usePlume({ args: ["--api-key", API_KEY, "--longpoll-window", String(WINDOW_S)] });
  const lpUrl = (query) => `http://${h.server.addr}/socket/longpoll?${query}`;

  const as = (user, { longpoll = true, ...extra } = {}) =>
    h.connect({
      longpoll,
      logger: true,
      params: { token: signJwt(user), device_unique_id: `${user}-device`, preferred_language: "EN", ...extra },
    });
  const addMember = async (chat, user) => {
    const { status } = await api(h.server.port, "PUT", `/api/chats/${chat}/members/${user}`, API_KEY);
    assert.equal(status, 200);
  };
  const joinChat = async (client, chat) => {
    const ch = client.socket.channel(`chat:${chat}`, {});
    await joinOk(ch);
    return ch;
  };

  /** One raw LongPoll request; resolves with {status, headers, json}. */
  async function lp(method, query, { body, headers = {} } = {}) {
    const res = await fetch(lpUrl(query), { method, body, headers });
    const text = await res.text();
    return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : null };
  }
  const q = (extra = "") => `token=${h.token}&vsn=2.0.0${extra}`;
  const ndjson = { "content-type": "application/x-ndjson" };

  h.test("phoenix.js over LongPoll: join, send, receive, notifications, pending, leave", async () => {
    const chat = uniq("c");
    const bobId = uniq("bob");
    const carolId = uniq("carol");
    for (const u of ["alice", bobId, carolId]) await addMember(chat, u);
    const alice = await as("alice");
    assert.equal(alice.socket.transport.name, "LongPoll");
    assert.equal(alice.socket.conn.constructor.name, "LongPoll");
    const daveId = uniq("dave");
    await addMember(chat, daveId);
    const bob = await as(bobId);
    const ca = await joinChat(alice, chat);
    const cb = await joinChat(bob, chat);
    // dave is online but not in the chat: he gets a live new_notification.
    const dave = await as(daveId);
    const notes = dave.socket.channel(`notifications:${daveId}`, {});
    await joinOk(notes);
    const atBob = collectEvents(cb, "receive_message");
    const live = waitForEvent(notes, "new_notification");
    const sent = waitForEvent(ca, "message_sent");
    const reply = await pushAndReceive(ca, "send_message", { content: "over long poll", mobile_ref_id: "lp-1" });
    assert.equal(reply.status, "ok");
    assert.equal((await sent).payload.status, "sent");
    await waitUntil(() => atBob.length === 1, { what: "receive_message at bob" });
    assert.equal(atBob[0].payload.content, "over long poll");
    assert.equal(atBob[0].payload.message_id, reply.response.message_id);
    assert.equal((await live).payload.content, "over long poll");

    // carol was offline: her pending notification arrives when she joins, over LongPoll too.
    const carol = await as(carolId);
    const cn = carol.socket.channel(`notifications:${carolId}`, {});
    const pending = waitForEvent(cn, "pending_notifications");
    await joinOk(cn);
    assert.deepEqual((await pending).payload.notifications.map((n) => n.content), ["over long poll"]);

    // Leave: the reply comes back, the channel closes, and nothing more reaches it.
    const left = await withTimeout(new Promise((resolve) => cb.leave().receive("ok", resolve)), 5_000, "leave reply");
    assert.deepEqual(left, {});
    assert.equal(cb.state, "closed");
    await pushAndReceive(ca, "send_message", { content: "after leave", mobile_ref_id: "lp-2" });
    await delay(300);
    assert.equal(atBob.length, 1, "no delivery after leave");
    assert.ok(alice.logs.some((l) => l.startsWith("transport: LongPoll connected to")), alice.logs.join("\n"));
  });

  h.test("a LongPoll client and a WebSocket client in one chat see each other's messages", async () => {
    const chat = uniq("c");
    await addMember(chat, "lp");
    await addMember(chat, "ws");
    const polling = await as("lp");
    const socket = await as("ws", { longpoll: false });
    assert.equal(polling.socket.conn.constructor.name, "LongPoll");
    assert.notEqual(socket.socket.conn.constructor.name, "LongPoll");
    const cl = await joinChat(polling, chat);
    const cw = await joinChat(socket, chat);
    const atLp = collectEvents(cl, "receive_message");
    const atWs = collectEvents(cw, "receive_message");
    for (let i = 0; i < 5; i++) {
      assert.equal((await pushAndReceive(cl, "send_message", { content: `from lp ${i}`, mobile_ref_id: `l${i}` })).status, "ok");
      assert.equal((await pushAndReceive(cw, "send_message", { content: `from ws ${i}`, mobile_ref_id: `w${i}` })).status, "ok");
    }
    await waitUntil(() => atLp.length === 5 && atWs.length === 5, { what: "five messages each way" });
    assert.deepEqual(atWs.map((e) => e.payload.content), [0, 1, 2, 3, 4].map((i) => `from lp ${i}`));
    assert.deepEqual(atLp.map((e) => e.payload.content), [0, 1, 2, 3, 4].map((i) => `from ws ${i}`));
  });

  h.test("a burst of pushes in one tick goes out as batched POSTs and every reply arrives in order", async () => {
    const c = await as(uniq("burst"));
    const ch = c.socket.channel(`echo:${uniq("e")}`, {});
    await joinOk(ch);
    const replies = [];
    const done = [];
    for (let i = 0; i < 150; i++) {
      done.push(new Promise((resolve) => ch.push("echo", { i }).receive("ok", (r) => { replies.push(r.i); resolve(); })));
    }
    await withTimeout(Promise.all(done), 10_000, "150 echo replies");
    assert.deepEqual(replies, [...Array(150).keys()]);
  });

  h.test("after a server restart the session is gone (410): phoenix.js starts a new one and rejoins", async () => {
    const chat = uniq("c");
    await addMember(chat, "alice");
    await addMember(chat, "bob");
    const alice = await as("alice");
    const ca = await joinChat(alice, chat);
    const oldToken = alice.socket.conn.token;
    const bob = await as("bob", { longpoll: false });
    const cb = await joinChat(bob, chat);
    await h.server.restart();
    await waitUntil(() => alice.socket.conn?.token && alice.socket.conn.token !== oldToken && ca.state === "joined" && cb.state === "joined", {
      timeout: 10_000,
      what: "a new LongPoll session and the chat rejoined",
    });
    const atAlice = collectEvents(ca, "receive_message");
    assert.equal((await pushAndReceive(cb, "send_message", { content: "welcome back", mobile_ref_id: "r1" })).status, "ok");
    await waitUntil(() => atAlice.length === 1, { what: "delivery to the new session" });
  });

  h.test("HTTP contract: 410 with a token opens, POST ndjson, 200 with messages, 204 after the window", async () => {
    const open = await lp("GET", q("&"));
    assert.equal(open.status, 200);
    assert.equal(open.headers.get("content-type"), "application/json; charset=utf-8");
    assert.equal(open.headers.get("cache-control"), "no-store");
    assert.equal(open.headers.get("access-control-allow-origin"), "*");
    assert.equal(open.json.status, 410);
    assert.deepEqual(open.json.messages, []);
    const token = open.json.token;
    assert.match(token, /^plp\.[A-Za-z0-9._-]+$/);
    const topic = `echo:${uniq("e")}`;
    const body = [
      JSON.stringify(["1", "1", topic, "phx_join", {}]),
      JSON.stringify([null, "2", "phoenix", "heartbeat", {}]),
      JSON.stringify(["1", "3", topic, "echo", { a: 1 }]),
    ].join("\n");
    const posted = await lp("POST", q(`&token=${token}`), { body, headers: ndjson });
    assert.deepEqual([posted.status, posted.json], [200, { status: 200 }]);
    const got = await lp("GET", q(`&token=${token}`));
    assert.equal(got.json.status, 200);
    assert.equal(got.json.token, token);
    const [joined, ...rest] = got.json.messages.map((m) => JSON.parse(m));
    // The echo channel's join reply shows the connect params: the application's `token`
    // param (the JWT), not the session token phoenix.js appends under the same name.
    assert.deepEqual(joined, ["1", "1", topic, "phx_reply", { status: "ok", response: { auth_token: null, params: { token: h.token, vsn: "2.0.0" }, vsn: "2.0.0" } }]);
    assert.deepEqual(rest, [
      [null, "2", "phoenix", "phx_reply", { status: "ok", response: {} }],
      ["1", "3", topic, "phx_reply", { status: "ok", response: { a: 1 } }],
    ]);
    // Nothing to send: the poll is held for the window, then answered 204.
    const t0 = Date.now();
    const idle = await lp("GET", q(`&token=${token}`));
    assert.deepEqual(idle.json, { status: 204, token, messages: [] });
    assert.ok(Date.now() - t0 >= WINDOW_S * 1000 - 100, "held for the poll window");
    // The token may come in the x-phoenix-longpoll-token header instead.
    const viaHeader = lp("GET", q(), { headers: { "x-phoenix-longpoll-token": token } });
    await delay(100);
    assert.deepEqual((await lp("POST", q(`&token=${token}`), { body: JSON.stringify(["1", "4", topic, "echo", { b: 2 }]), headers: ndjson })).json, { status: 200 });
    assert.deepEqual((await viaHeader).json.messages.map((m) => JSON.parse(m)), [["1", "4", topic, "phx_reply", { status: "ok", response: { b: 2 } }]]);
  });

  h.test("HTTP contract: refusals, a lost session, the expiry, CORS and bad input", async () => {
    // Connect refused (no JWT, or an unknown vsn): {"status":403} inside a 200.
    assert.deepEqual((await lp("GET", "vsn=2.0.0&")).json, { status: 403 });
    assert.deepEqual((await lp("GET", q().replace("2.0.0", "3.0.0"))).json, { status: 403 });
    // A token this server never issued, or a malformed one: 410 without a token.
    assert.deepEqual((await lp("GET", q("&token=plp.local.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA"))).json, { status: 410 });
    assert.deepEqual((await lp("POST", q("&token=plp.nope"), { body: "[]", headers: ndjson })).json, { status: 410 });
    // CORS preflight.
    const pre = await fetch(lpUrl(q()), {
      method: "OPTIONS",
      headers: { origin: "http://app.example", "access-control-request-headers": "x-phoenix-authtoken, content-type" },
    });
    assert.equal(pre.status, 200);
    assert.equal(pre.headers.get("access-control-allow-headers"), "x-phoenix-authtoken, content-type");
    assert.equal(pre.headers.get("access-control-allow-methods"), "get, post, options");
    assert.equal(pre.headers.get("access-control-max-age"), "3600");
    assert.equal(pre.headers.get("access-control-allow-origin"), "*");
    assert.equal((await fetch(lpUrl(q()), { method: "DELETE" })).status, 405);

    const session = async () => (await lp("GET", q("&"))).json.token;
    // More than 100 frames in one POST: 400, and the session is untouched.
    let token = await session();
    const many = Array.from({ length: 101 }, (_, i) => JSON.stringify([null, String(i), "phoenix", "heartbeat", {}])).join("\n");
    const tooMany = await lp("POST", q(`&token=${token}`), { body: many, headers: ndjson });
    assert.equal(tooMany.status, 400);
    assert.equal(tooMany.json.status, 400);
    assert.match(tooMany.json.reason, /101 frames/);
    assert.deepEqual((await lp("POST", q(`&token=${token}`), { body: many.split("\n").slice(1).join("\n"), headers: ndjson })).json, { status: 200 });
    assert.equal((await lp("GET", q(`&token=${token}`))).json.messages.length, 100);
    // A frame the WebSocket would close the socket for ends the session, with the same code.
    const bad = await lp("POST", q(`&token=${token}`), { body: "[not json", headers: ndjson });
    assert.equal(bad.json.status, 400);
    assert.equal(bad.json.code, 4001);
    assert.deepEqual((await lp("GET", q(`&token=${token}`))).json, { status: 410 });
    // A line that is not a JSON array must be base64 of a binary frame.
    token = await session();
    const notB64 = await lp("POST", q(`&token=${token}`), { body: "@@@", headers: ndjson });
    assert.deepEqual([notB64.json.status, notB64.json.code], [400, 4003]);
    // No poll for 1.5 windows: the session ends.
    token = await session();
    await delay(WINDOW_S * 1500 + 400);
    assert.deepEqual((await lp("GET", q(`&token=${token}`))).json, { status: 410 });
  });

  h.test("phoenix.js authToken over LongPoll: the JWT travels in the x-phoenix-authtoken header", async () => {
    const user = uniq("tok");
    const c = await h.connect({ longpoll: true, auth: false, params: {}, authToken: signJwt(user) });
    assert.equal(c.socket.conn.constructor.name, "LongPoll");
    await joinOk(c.socket.channel(`notifications:${user}`, {}));
    // The raw form: no token param, the header only.
    const open = await lp("GET", "vsn=2.0.0&", { headers: { "x-phoenix-authtoken": signJwt(user) } });
    assert.equal(open.json.status, 410);
  });

  h.test("a V1 client posts one JSON object per request and polls V1 objects", async () => {
    const open = await lp("GET", `token=${h.token}&vsn=1.0.0&`);
    const token = open.json.token;
    const topic = `echo:${uniq("e")}`;
    const join = JSON.stringify({ topic, event: "phx_join", payload: {}, ref: "1" });
    assert.deepEqual((await lp("POST", `token=${h.token}&vsn=1.0.0&token=${token}`, { body: join, headers: { "content-type": "application/json" } })).json, { status: 200 });
    const got = await lp("GET", `token=${h.token}&vsn=1.0.0&token=${token}`);
    const reply = JSON.parse(got.json.messages[0]);
    assert.deepEqual([reply.topic, reply.event, reply.ref, reply.payload.status], [topic, "phx_reply", "1", "ok"]);
  });

  h.test("a base64 line is a V2 binary push", async () => {
    const token = (await lp("GET", q("&"))).json.token;
    const push = (topic, ref) => {
      const parts = ["1", ref, topic, "echo"].map((s) => Buffer.from(s));
      return Buffer.concat([Buffer.from([0, ...parts.map((p) => p.length)]), ...parts, Buffer.from('{"x":1}')]).toString("base64");
    };
    // A binary push to a topic this session has not joined is decoded and answered like
    // any message there: a text "unmatched topic" reply with its ref.
    const topic = `echo:${uniq("e")}`;
    assert.deepEqual((await lp("POST", q(`&token=${token}`), { body: push(topic, "7"), headers: ndjson })).json, { status: 200 });
    const got = await lp("GET", q(`&token=${token}`));
    assert.deepEqual(got.json.messages.map((m) => JSON.parse(m)), [[null, "7", topic, "phx_reply", { status: "error", response: { reason: "unmatched topic" } }]]);
    // Once joined, the echo of a binary push is a binary reply, which LongPoll cannot carry
    // (text only): it is dropped, and the poll is answered empty when the window ends.
    await lp("POST", q(`&token=${token}`), { body: JSON.stringify(["1", "1", topic, "phx_join", {}]), headers: ndjson });
    await lp("GET", q(`&token=${token}`));
    assert.deepEqual((await lp("POST", q(`&token=${token}`), { body: push(topic, "8"), headers: ndjson })).json, { status: 200 });
    assert.equal((await lp("GET", q(`&token=${token}`))).json.status, 204);
    // Valid base64 of an invalid binary frame (kind 9) ends the session with 4003.
    const bad = await lp("POST", q(`&token=${token}`), { body: Buffer.from([9, 0, 0]).toString("base64"), headers: ndjson });
    assert.deepEqual([bad.json.status, bad.json.code], [400, 4003]);
  });
});

describe("LongPoll fallback (a node that refuses WebSocket upgrades)", () => {
  const h = usePlume({ args: ["--websocket", "false"] });

  h.test("longPollFallbackMs: the WebSocket fails, phoenix.js falls back to LongPoll, remembers it, and works", async () => {
    const storage = memoryStorage();
    const c = await h.connect({ longPollFallbackMs: 300, sessionStorage: storage, logger: true });
    assert.equal(c.socket.conn.constructor.name, "LongPoll");
    assert.equal(storage.getItem("phx:fallback:LongPoll"), "true");
    assert.ok(c.logs.some((l) => l.includes("falling back to LongPoll")), c.logs.join("\n"));
    const ch = c.socket.channel(`echo:${uniq("e")}`, {});
    await joinOk(ch);
    assert.deepEqual((await pushAndReceive(ch, "echo", { hello: "fallback" })).response, { hello: "fallback" });
    // A second socket of the same tab goes straight to LongPoll.
    const again = await h.connect({ longPollFallbackMs: 300, sessionStorage: storage, logger: true });
    assert.equal(again.socket.conn.constructor.name, "LongPoll");
    assert.ok(again.logs.some((l) => l.includes("memorized")), again.logs.join("\n"));
  });
});

describe("LongPoll origin check", () => {
  const h = usePlume({ args: ["--check-origin", "http://good.example"] });

  h.test("every LongPoll request from a refused Origin gets {status:403}; an allowed one connects", async () => {
    const url = (q) => `http://${h.server.addr}/socket/longpoll?token=${h.token}&vsn=2.0.0${q}`;
    const get = async (origin, q = "&") => (await (await fetch(url(q), { headers: { origin } })).json());
    assert.deepEqual(await get("http://evil.example"), { status: 403 });
    const ok = await get("http://good.example");
    assert.equal(ok.status, 410);
    // A refused origin cannot use a session an allowed one opened either.
    const post = await fetch(url(`&token=${ok.token}`), { method: "POST", headers: { origin: "http://evil.example", "content-type": "application/x-ndjson" }, body: "[]" });
    assert.deepEqual(await post.json(), { status: 403 });
  });
});

