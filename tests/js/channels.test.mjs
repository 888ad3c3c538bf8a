// Channel lifecycle through phoenix.js on the sample `echo:*` channel:
// join outcomes, echo, push_back, crash + automatic rejoin, server close,
// and leave.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { assertFrame } from "./lib/frames.mjs";
import {
  collectEvents,
  delay,
  join,
  joinOk,
  pushAndReceive,
  pushRaw,
  uniq,
  waitForEvent,
  waitUntil,
  withTimeout,
} from "./lib/client.mjs";

const isFrame = (dir, topic, event) => (e) =>
  e.type === "frame" && e.dir === dir && !e.binary && Array.isArray(e.frame) && e.frame[2] === topic && e.frame[3] === event;

describe("channels: join", () => {
  const h = usePlume();

  h.test("join ok: reply frame is [jr, jr, topic, phx_reply, {response, status: ok}]", async () => {
    const c = await h.connect({ params: { token: h.token, lang: "fr" } });
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    const response = await joinOk(ch);
    assert.deepEqual(response, { auth_token: null, params: h.params({ lang: "fr" }), vsn: "2.0.0" });
    assert.equal(ch.state, "joined");

    const sent = c.rec.find(isFrame("out", topic, "phx_join"));
    const jr = ch.joinRef();
    assert.deepEqual(sent.frame, [jr, jr, topic, "phx_join", {}]);
    const reply = c.rec.find(isFrame("in", topic, "phx_reply"));
    assert.deepEqual(reply.frame, [jr, jr, topic, "phx_reply", { response, status: "ok" }]);
  });

  h.test("join payload without special keys is accepted and does not change the reply", async () => {
    const c = await h.connect();
    const ch = c.socket.channel(`echo:${uniq()}`, { name: "x", nested: { list: [1, 2] }, reject_not: "nope" });
    const response = await joinOk(ch);
    assert.deepEqual(response, { auth_token: null, params: h.params(), vsn: "2.0.0" });
    const sent = c.rec.find(isFrame("out", ch.topic, "phx_join"));
    assert.deepEqual(sent.frame[4], { name: "x", nested: { list: [1, 2] }, reject_not: "nope" });
  });

  h.test('join {"reject": reason} replies error {reason} and phoenix.js keeps retrying', async () => {
    const c = await h.connect({ rejoinAfterMs: () => 50 });
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic, { reject: "not welcome" });
    const result = await join(ch);
    assert.deepEqual(result, { status: "error", response: { reason: "not welcome" } });
    assert.equal(ch.state, "errored");

    const firstJr = c.rec.find(isFrame("out", topic, "phx_join")).frame[0];
    const reply = c.rec.find(isFrame("in", topic, "phx_reply"));
    assert.deepEqual(reply.frame, [firstJr, firstJr, topic, "phx_reply", { response: { reason: "not welcome" }, status: "error" }]);

    // phoenix.js rejoins an errored channel; the server must reject again.
    const second = await c.rec.waitFor(
      (e) => isFrame("in", topic, "phx_reply")(e) && e.frame[0] !== firstJr,
      { from: reply.seq + 1, what: "the reply to the automatic rejoin" },
    );
    assert.equal(second.frame[0], second.frame[1]);
    assert.deepEqual(second.frame[4], { response: { reason: "not welcome" }, status: "error" });
    ch.leave();
  });

  h.test('join {"crash": true} replies error {"reason": "join crashed"}', async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic, { crash: true });
    const result = await join(ch);
    assert.deepEqual(result, { status: "error", response: { reason: "join crashed" } });
    const jr = ch.joinRef();
    const reply = c.rec.find(isFrame("in", topic, "phx_reply"));
    assert.deepEqual(reply.frame, [jr, jr, topic, "phx_reply", { response: { reason: "join crashed" }, status: "error" }]);
    assert.equal(c.socket.connectionState(), "open", "a crashing join does not take the socket down");
    ch.leave();
  });

  h.test("join of a topic without a route replies error unmatched topic with a null join_ref", async () => {
    const c = await h.connect();
    const ch = c.socket.channel("nope:1");
    const result = await join(ch);
    assert.deepEqual(result, { status: "error", response: { reason: "unmatched topic" } });
    const ref = c.rec.find(isFrame("out", "nope:1", "phx_join")).frame[1];
    const reply = c.rec.find(isFrame("in", "nope:1", "phx_reply"));
    assert.deepEqual(reply.frame, [null, ref, "nope:1", "phx_reply", { response: { reason: "unmatched topic" }, status: "error" }]);
    ch.leave();
  });

  h.test("several echo topics on one socket are routed independently", async () => {
    const c = await h.connect();
    const a = c.socket.channel(`echo:${uniq("a")}`);
    const b = c.socket.channel(`echo:${uniq("b")}`);
    await Promise.all([joinOk(a), joinOk(b)]);
    assert.notEqual(a.joinRef(), b.joinRef());
    const [ra, rb] = await Promise.all([pushAndReceive(a, "echo", { who: "a" }), pushAndReceive(b, "echo", { who: "b" })]);
    assert.deepEqual(ra, { status: "ok", response: { who: "a" } });
    assert.deepEqual(rb, { status: "ok", response: { who: "b" } });
    const replyA = c.rec.find((e) => isFrame("in", a.topic, "phx_reply")(e) && e.frame[4].response.who === "a");
    assert.equal(replyA.frame[0], a.joinRef(), "reply carries the join_ref of its own channel");
  });
});

describe("channels: events", () => {
  const h = usePlume();

  h.test("echo replies ok with the same payload, echoing join_ref and ref", async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const payload = { text: "héllo ✓ 😀", n: 42, f: 1.5, neg: -7, t: true, nil: null, list: [1, "two", { three: 3 }], deep: { a: { b: { c: [] } } } };
    const result = await pushAndReceive(ch, "echo", payload);
    assert.deepEqual(result, { status: "ok", response: payload });

    const pushed = c.rec.find(isFrame("out", topic, "echo"));
    const [jr, ref] = pushed.frame;
    assert.equal(jr, ch.joinRef());
    const reply = c.rec.find((e) => isFrame("in", topic, "phx_reply")(e) && e.frame[1] === ref);
    assert.deepEqual(reply.frame, [jr, ref, topic, "phx_reply", { response: payload, status: "ok" }]);
  });

  h.test("echo of many pushes in a row keeps every ref paired with its payload", async () => {
    const c = await h.connect();
    const ch = c.socket.channel(`echo:${uniq()}`);
    await joinOk(ch);
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => pushAndReceive(ch, "echo", { i })));
    results.forEach((r, i) => assert.deepEqual(r, { status: "ok", response: { i } }));
  });

  h.test("pushes buffered before the join reply are delivered after it", async () => {
    const c = await h.connect();
    const ch = c.socket.channel(`echo:${uniq()}`);
    const joined = join(ch);
    const early = pushAndReceive(ch, "echo", { early: true });
    assert.equal((await joined).status, "ok");
    assert.deepEqual(await early, { status: "ok", response: { early: true } });
  });

  h.test("push_back pushes [jr, null, topic, push_back, payload] to the sender and replies ok {}", async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const got = waitForEvent(ch, "push_back");
    const result = await pushAndReceive(ch, "push_back", { hello: "me" });
    assert.deepEqual(result, { status: "ok", response: {} });
    const ev = await got;
    assert.deepEqual(ev.payload, { hello: "me" });
    assert.equal(ev.ref, null);

    const frame = c.rec.find(isFrame("in", topic, "push_back"));
    assert.deepEqual(frame.frame, [ch.joinRef(), null, topic, "push_back", { hello: "me" }]);
  });

  h.test("any other event is broadcast [null, null, topic, E, payload] to the sender too, with reply ok {}", async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const got = waitForEvent(ch, "new_msg");
    const result = await pushAndReceive(ch, "new_msg", { body: "hi all" });
    assert.deepEqual(result, { status: "ok", response: {} });
    assert.deepEqual((await got).payload, { body: "hi all" });
    const frame = c.rec.find(isFrame("in", topic, "new_msg"));
    assert.deepEqual(frame.frame, [null, null, topic, "new_msg", { body: "hi all" }]);
  });

  h.test("crash: phx_error {reason: channel_crash} with ref = join_ref, then phoenix.js rejoins on the same socket", async () => {
    const c = await h.connect({ rejoinAfterMs: () => 50 });
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const jr1 = ch.joinRef();
    const errors = [];
    ch.onError((reason) => errors.push(reason));

    const mark = c.rec.mark();
    ch.push("crash", {});
    const errFrame = await c.rec.waitFor(isFrame("in", topic, "phx_error"), { from: mark, what: "phx_error" });
    assert.deepEqual(errFrame.frame, [jr1, jr1, topic, "phx_error", { reason: "channel_crash" }]);

    // phoenix.js rejoins with a fresh join_ref and the server accepts it.
    const rejoin = await c.rec.waitFor(isFrame("out", topic, "phx_join"), { from: errFrame.seq + 1, what: "the rejoin" });
    const jr2 = rejoin.frame[0];
    assert.notEqual(jr2, jr1);
    assert.equal(rejoin.frame[1], jr2);
    const rejoinReply = await c.rec.waitFor((e) => isFrame("in", topic, "phx_reply")(e) && e.frame[1] === jr2, {
      from: rejoin.seq + 1,
      what: "the rejoin reply",
    });
    assert.equal(rejoinReply.frame[0], jr2);
    assert.equal(rejoinReply.frame[4].status, "ok");
    await waitUntil(() => ch.state === "joined", { what: "the channel to be joined again" });

    assert.deepEqual(errors, [{ reason: "channel_crash" }]);
    assert.equal(c.rec.events("open").length, 1, "the socket was not reconnected");
    assert.equal(c.rec.events("close").length, 0, "the socket stayed open");

    // The rejoined channel works.
    assert.deepEqual(await pushAndReceive(ch, "echo", { after: "crash" }), { status: "ok", response: { after: "crash" } });
  });

  h.test("crash with default rejoinAfterMs: phoenix.js rejoins after about one second", async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const mark = c.rec.mark();
    ch.push("crash", {});
    const errFrame = await c.rec.waitFor(isFrame("in", topic, "phx_error"), { from: mark });
    const rejoin = await c.rec.waitFor(isFrame("out", topic, "phx_join"), { from: errFrame.seq + 1, timeout: 3_000 });
    const gap = rejoin.t - errFrame.t;
    assert.ok(gap >= 900 && gap < 2_000, `rejoin after ${gap} ms`);
    await waitUntil(() => ch.state === "joined", { what: "rejoined" });
  });

  h.test("close: reply ok {} then phx_close [jr, jr, topic, phx_close, {}]; channel closes without rejoin", async () => {
    const c = await h.connect({ rejoinAfterMs: () => 50 });
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const jr = ch.joinRef();
    const closed = new Promise((resolve) => ch.onClose(resolve));

    const mark = c.rec.mark();
    const result = await pushAndReceive(ch, "close", {});
    assert.deepEqual(result, { status: "ok", response: {} });
    await withTimeout(closed, 3_000, "channel onClose");

    const ref = c.rec.find(isFrame("out", topic, "close"), mark).frame[1];
    const reply = c.rec.find((e) => isFrame("in", topic, "phx_reply")(e) && e.frame[1] === ref, mark);
    const close = c.rec.find(isFrame("in", topic, "phx_close"), mark);
    assert.deepEqual(reply.frame, [jr, ref, topic, "phx_reply", { response: {}, status: "ok" }]);
    assert.deepEqual(close.frame, [jr, jr, topic, "phx_close", {}]);
    assert.ok(reply.seq < close.seq, "the reply precedes phx_close");

    assert.equal(ch.state, "closed");
    assert.ok(!c.socket.channels.includes(ch), "phoenix.js removed the channel");
    await delay(300);
    assert.equal(c.rec.find(isFrame("out", topic, "phx_join"), close.seq), undefined, "no rejoin after phx_close");
    assert.equal(c.socket.connectionState(), "open");

    // The topic can be joined again from a fresh channel object.
    const again = c.socket.channel(topic);
    await joinOk(again);
    assert.deepEqual(await pushAndReceive(again, "echo", { again: 1 }), { status: "ok", response: { again: 1 } });
  });
});

describe("channels: leave", () => {
  const h = usePlume();

  h.test("leave: phx_leave gets reply ok {} and [jr, jr, topic, phx_close, {}]", async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const jr = ch.joinRef();
    const onClose = new Promise((resolve) => ch.onClose(resolve));
    const mark = c.rec.mark();
    ch.leave();
    await withTimeout(onClose, 2_000, "channel onClose after leave()");

    const leave = await c.rec.waitFor(isFrame("out", topic, "phx_leave"), { from: mark });
    const ref = leave.frame[1];
    assertFrame(leave.frame, [jr, ref, topic, "phx_leave", {}]);
    const reply = await c.rec.waitFor((e) => isFrame("in", topic, "phx_reply")(e) && e.frame[1] === ref, {
      from: leave.seq + 1,
      what: "the leave reply",
    });
    assert.deepEqual(reply.frame, [jr, ref, topic, "phx_reply", { response: {}, status: "ok" }]);
    const close = await c.rec.waitFor(isFrame("in", topic, "phx_close"), { from: leave.seq + 1, what: "phx_close" });
    assert.deepEqual(close.frame, [jr, jr, topic, "phx_close", {}]);
    assert.ok(reply.seq < close.seq, "leave reply precedes phx_close");
  });

  h.test("after leave, pushes to the topic get unmatched topic (join_ref null)", async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const jr = ch.joinRef();
    const mark = c.rec.mark();
    ch.leave();
    await c.rec.waitFor(isFrame("in", topic, "phx_close"), { from: mark, what: "phx_close" });

    for (const joinRef of [jr, null]) {
      const ref = pushRaw(c.socket, { topic, event: "echo", payload: { late: true }, joinRef });
      const reply = await c.rec.waitFor((e) => isFrame("in", topic, "phx_reply")(e) && e.frame[1] === ref, {
        what: `the reply to the late push (join_ref ${joinRef})`,
      });
      assert.deepEqual(reply.frame, [null, ref, topic, "phx_reply", { response: { reason: "unmatched topic" }, status: "error" }]);
    }
  });

  h.test("after leave, broadcasts on the topic no longer reach the socket that left", async () => {
    const leaver = await h.connect({ label: "leaver" });
    const stayer = await h.connect({ label: "stayer" });
    const topic = `echo:${uniq()}`;
    const lch = leaver.socket.channel(topic);
    const sch = stayer.socket.channel(topic);
    await joinOk(lch);
    await joinOk(sch);
    const mark = leaver.rec.mark();
    lch.leave();
    await leaver.rec.waitFor(isFrame("in", topic, "phx_close"), { from: mark, what: "phx_close" });

    const seen = collectEvents(sch, "after_leave");
    assert.deepEqual(await pushAndReceive(sch, "after_leave", { n: 1 }), { status: "ok", response: {} });
    await waitUntil(() => seen.length === 1, { what: "the stayer to get its own broadcast" });
    await delay(100);
    assert.equal(leaver.rec.find(isFrame("in", topic, "after_leave"), mark), undefined, "the leaver got a broadcast after leaving");
  });

  h.test("the topic can be joined again after leave", async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const first = c.socket.channel(topic);
    await joinOk(first);
    const mark = c.rec.mark();
    first.leave();
    await c.rec.waitFor(isFrame("in", topic, "phx_close"), { from: mark });
    const second = c.socket.channel(topic);
    await joinOk(second);
    assert.notEqual(second.joinRef(), first.joinRef());
    assert.deepEqual(await pushAndReceive(second, "echo", { x: 1 }), { status: "ok", response: { x: 1 } });
  });
});
