// Connecting: the URL phoenix.js builds, connect params, serializer versions
// (vsn) and refusal of unsupported versions before the upgrade.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { delay, joinOk, pushAndReceive, uniq, withTimeout } from "./lib/client.mjs";

describe("connect", () => {
  const h = usePlume();

  h.test("phoenix.js connects to <url>/websocket?vsn=2.0.0 and the socket opens", async () => {
    const c = await h.connect();
    const [connect] = c.rec.events("connect");
    const u = new URL(connect.url);
    assert.equal(u.protocol, "ws:");
    assert.equal(u.host, h.server.addr);
    assert.equal(u.pathname, "/socket/websocket");
    assert.equal(u.search, `?token=${h.token}&vsn=2.0.0`, "the token param, then vsn last");
    assert.equal(connect.protocols, null, "no subprotocols are offered without authToken");
    assert.equal(c.socket.connectionState(), "open");
    const [open] = c.rec.events("open");
    assert.equal(open.protocol, "", "no subprotocol is selected when none was offered");
  });

  h.test("join reply echoes vsn 2.0.0, a null auth_token and the query params", async () => {
    const c = await h.connect();
    const response = await joinOk(c.socket.channel(`echo:${uniq()}`));
    assert.deepEqual(response, { auth_token: null, params: h.params(), vsn: "2.0.0" });
  });

  h.test("connect params from the Socket options reach the server as strings", async () => {
    const c = await h.connect({ params: { token: h.token, name: "a b&c=d/é", n: 1, flag: true } });
    const connectUrl = c.rec.events("connect")[0].url;
    assert.ok(connectUrl.endsWith(`?token=${h.token}&name=a%20b%26c%3Dd%2F%C3%A9&n=1&flag=true&vsn=2.0.0`), connectUrl);
    const response = await joinOk(c.socket.channel(`echo:${uniq()}`));
    assert.deepEqual(response.params, h.params({ name: "a b&c=d/é", n: "1", flag: "true" }));
    assert.equal(response.vsn, "2.0.0");
  });

  h.test("an explicit vsn 2.0.0 option behaves like the default", async () => {
    const c = await h.connect({ vsn: "2.0.0" });
    const ch = c.socket.channel(`echo:${uniq()}`);
    const response = await joinOk(ch);
    assert.deepEqual(response, { auth_token: null, params: h.params(), vsn: "2.0.0" });
    const echoed = await pushAndReceive(ch, "echo", { ok: 1 });
    assert.deepEqual(echoed, { status: "ok", response: { ok: 1 } });
  });

  h.test("params are re-read on reconnect when given as a function", async () => {
    let n = 0;
    const c = h.client({ params: () => ({ attempt: String(++n) }) });
    c.socket.connect();
    const ch = c.socket.channel(`echo:${uniq()}`);
    const first = await joinOk(ch);
    assert.deepEqual(first.params, h.params({ attempt: "1" }));
    // Drop the connection from the client side; phoenix.js reconnects by itself
    // (the close was not requested through disconnect()).
    const mark = c.rec.mark();
    c.rec.transports[0].terminate();
    const reply = await c.rec.waitForText(
      "in",
      (f) => f[3] === "phx_reply" && f[2] === ch.topic && f[0] !== null && f[4]?.status === "ok",
      { from: mark, timeout: 5_000 },
    );
    assert.deepEqual(reply.frame[4].response.params, h.params({ attempt: "2" }));
    assert.equal(c.rec.events("open").length, 2);
  });

  h.test("vsn=3.0.0 is refused with HTTP 403 before the upgrade (raw ws)", async () => {
    const r = h.rawUnopened("vsn=3.0.0");
    const err = await withTimeout(
      r.opened.then(
        () => assert.fail("the upgrade with vsn=3.0.0 must not succeed"),
        (e) => e,
      ),
      5_000,
      "the refused handshake",
    );
    assert.equal(err.status, 403, `expected HTTP 403, got: ${err.message}`);
    assert.equal(r.rec.events("open").length, 0);
    // Control: the same request with vsn=2.0.0 (and 1.0.0) is upgraded, so the
    // refusal above is about the version and nothing else.
    await h.raw("vsn=2.0.0");
    await h.raw("vsn=1.0.0");
  });

  h.test("phoenix.js with vsn 3.0.0 never opens and reports errors", async () => {
    const c = h.client({ vsn: "3.0.0", reconnectAfterMs: () => 200 });
    const errors = [];
    c.socket.onError((e) => errors.push(e));
    let opened = false;
    c.socket.onOpen(() => {
      opened = true;
    });
    c.socket.connect();
    await delay(600);
    assert.equal(opened, false, "socket must not open with an unsupported vsn");
    assert.ok(errors.length >= 1, "phoenix.js saw at least one connection error");
    assert.match(c.rec.events("connect")[0].url, /vsn=3\.0\.0$/);
    assert.equal(c.rec.events("open").length, 0);
  });
});

describe("connect: V1 serializer (vsn=1.0.0, raw ws)", () => {
  const h = usePlume();

  const v1Keys = ["event", "payload", "ref", "topic"];

  h.test("join, echo and heartbeat use V1 JSON objects with keys event,payload,ref,topic", async () => {
    const r = await h.raw("vsn=1.0.0");
    const topic = `echo:${uniq("v1")}`;

    r.send(`{"topic":"${topic}","event":"phx_join","payload":{},"ref":"1"}`);
    const joinReply = await r.next();
    assert.equal(joinReply.binary, false);
    const jr = JSON.parse(joinReply.text);
    assert.deepEqual(Object.keys(jr), v1Keys, `key order of ${joinReply.text}`);
    assert.deepEqual(Object.keys(jr.payload), ["response", "status"]);
    assert.deepEqual(jr, {
      event: "phx_reply",
      payload: { response: { auth_token: null, params: h.params({}, "1.0.0"), vsn: "1.0.0" }, status: "ok" },
      ref: "1",
      topic,
    });

    r.send({ topic, event: "echo", payload: { a: [1, 2, { b: "c" }] }, ref: "2" });
    const echo = await r.next();
    assert.deepEqual(Object.keys(JSON.parse(echo.text)), v1Keys);
    assert.deepEqual(JSON.parse(echo.text), {
      event: "phx_reply",
      payload: { response: { a: [1, 2, { b: "c" }] }, status: "ok" },
      ref: "2",
      topic,
    });

    r.send('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"3"}');
    const hb = await r.next();
    assert.equal(hb.text, '{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"3","topic":"phoenix"}');
  });

  h.test("unmatched topic in V1 is an error reply without join_ref", async () => {
    const r = await h.raw("vsn=1.0.0");
    r.send('{"topic":"nope:1","event":"phx_join","payload":{},"ref":"5"}');
    const reply = await r.next();
    assert.equal(
      reply.text,
      '{"event":"phx_reply","payload":{"response":{"reason":"unmatched topic"},"status":"error"},"ref":"5","topic":"nope:1"}',
    );
  });

  h.test("V1 join reply carries the connect params", async () => {
    const r = await h.raw("user=bob&vsn=1.0.0");
    const topic = `echo:${uniq("v1")}`;
    r.send({ topic, event: "phx_join", payload: {}, ref: "1" });
    const reply = JSON.parse((await r.next()).text);
    assert.deepEqual(reply.payload.response, { auth_token: null, params: h.params({ user: "bob" }, "1.0.0"), vsn: "1.0.0" });
    assert.equal(reply.payload.status, "ok");
    assert.equal("join_ref" in reply, false);
  });

  h.test("a broadcast from a V2 phoenix.js client reaches a V1 subscriber as a V1 object", async () => {
    const topic = `echo:${uniq("mixed")}`;
    const r = await h.raw("vsn=1.0.0");
    r.send({ topic, event: "phx_join", payload: {}, ref: "1" });
    assert.equal(JSON.parse((await r.next()).text).payload.status, "ok");

    const c = await h.connect();
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const res = await pushAndReceive(ch, "shout", { body: "from v2" });
    assert.deepEqual(res, { status: "ok", response: {} });

    const bcast = await r.next();
    assert.deepEqual(Object.keys(JSON.parse(bcast.text)), v1Keys);
    assert.deepEqual(JSON.parse(bcast.text), { event: "shout", payload: { body: "from v2" }, ref: null, topic });
  });

  h.test("V1 broadcast from the sender reaches the sender too, next to its reply", async () => {
    const topic = `echo:${uniq("v1b")}`;
    const r = await h.raw("vsn=1.0.0");
    r.send({ topic, event: "phx_join", payload: {}, ref: "1" });
    await r.next();
    r.send({ topic, event: "shout", payload: { n: 1 }, ref: "2" });
    const two = (await r.nextN(2)).map((e) => JSON.parse(e.text));
    const reply = two.find((m) => m.event === "phx_reply");
    const bcast = two.find((m) => m.event === "shout");
    assert.deepEqual(reply, { event: "phx_reply", payload: { response: {}, status: "ok" }, ref: "2", topic });
    assert.deepEqual(bcast, { event: "shout", payload: { n: 1 }, ref: null, topic });
  });
});
