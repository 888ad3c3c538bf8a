// Fan-out between sockets: broadcast to all subscribers (sender included),
// broadcast_from (sender excluded), push_back (sender only) and topic
// isolation.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { collectEvents, delay, joinOk, pushAndReceive, uniq, waitForEvent, waitUntil } from "./lib/client.mjs";

const inFrame = (topic, event) => (e) =>
  e.type === "frame" && e.dir === "in" && !e.binary && e.frame?.[2] === topic && e.frame?.[3] === event;

/**
 * Proves a negative without relying on timing alone: once the socket has
 * received a later broadcast (the marker) that went out after the event in
 * question, plus a grace period, the event must not be in its recording.
 */
async function assertNotReceived(h, client, channel, event, from) {
  const marker = `marker_${uniq("m")}`.replace(/-/g, "_");
  const seen = waitForEvent(channel, marker);
  assert.deepEqual(await pushAndReceive(channel, marker, {}), { status: "ok", response: {} });
  await seen;
  await delay(100);
  const leaked = client.rec.find(inFrame(channel.topic, event), from);
  assert.equal(leaked, undefined, `${client.label} must not receive "${event}" but got ${leaked && leaked.text}`);
}

async function twoMembers(h, extra = {}) {
  const topic = `echo:${uniq("room")}`;
  const a = await h.connect({ label: "A", ...extra });
  const b = await h.connect({ label: "B", ...extra });
  const ach = a.socket.channel(topic);
  const bch = b.socket.channel(topic);
  await joinOk(ach);
  await joinOk(bch);
  return { topic, a, b, ach, bch };
}

describe("broadcast between sockets", () => {
  const h = usePlume();

  h.test("a broadcast event reaches both sockets as [null, null, topic, E, payload]", async () => {
    const { topic, a, b, ach, bch } = await twoMembers(h);
    const payload = { body: "hello everyone", from: "A" };
    const atA = waitForEvent(ach, "new_msg");
    const atB = waitForEvent(bch, "new_msg");
    assert.deepEqual(await pushAndReceive(ach, "new_msg", payload), { status: "ok", response: {} });
    assert.deepEqual((await atA).payload, payload);
    assert.deepEqual((await atB).payload, payload);
    for (const c of [a, b]) {
      const frames = c.rec.entries.filter(inFrame(topic, "new_msg"));
      assert.equal(frames.length, 1, `${c.label} got exactly one copy`);
      assert.deepEqual(frames[0].frame, [null, null, topic, "new_msg", payload]);
    }
  });

  h.test("broadcast_from reaches only the other socket; the sender gets reply ok {}", async () => {
    const { topic, a, b, ach, bch } = await twoMembers(h);
    const mark = a.rec.mark();
    const atB = waitForEvent(bch, "broadcast_from");
    assert.deepEqual(await pushAndReceive(ach, "broadcast_from", { only: "others" }), { status: "ok", response: {} });
    assert.deepEqual((await atB).payload, { only: "others" });
    const frame = b.rec.find(inFrame(topic, "broadcast_from"));
    assert.deepEqual(frame.frame, [null, null, topic, "broadcast_from", { only: "others" }]);
    await assertNotReceived(h, a, ach, "broadcast_from", mark);
  });

  h.test("broadcast_from among three sockets excludes only the sender", async () => {
    const topic = `echo:${uniq("three")}`;
    const clients = [];
    for (const label of ["A", "B", "C"]) {
      const c = await h.connect({ label });
      const ch = c.socket.channel(topic);
      await joinOk(ch);
      clients.push({ c, ch });
    }
    const [A, B, C] = clients;
    const mark = A.c.rec.mark();
    const atB = waitForEvent(B.ch, "broadcast_from");
    const atC = waitForEvent(C.ch, "broadcast_from");
    await pushAndReceive(A.ch, "broadcast_from", { n: 3 });
    assert.deepEqual((await atB).payload, { n: 3 });
    assert.deepEqual((await atC).payload, { n: 3 });
    await assertNotReceived(h, A.c, A.ch, "broadcast_from", mark);
  });

  h.test("push_back reaches only the sender, carrying its join_ref", async () => {
    const { topic, a, b, ach, bch } = await twoMembers(h);
    const mark = b.rec.mark();
    const atA = waitForEvent(ach, "push_back");
    assert.deepEqual(await pushAndReceive(ach, "push_back", { just: "me" }), { status: "ok", response: {} });
    assert.deepEqual((await atA).payload, { just: "me" });
    assert.deepEqual(a.rec.find(inFrame(topic, "push_back")).frame, [ach.joinRef(), null, topic, "push_back", { just: "me" }]);
    await assertNotReceived(h, b, bch, "push_back", mark);
  });

  h.test("broadcasts stay within their topic", async () => {
    const { topic, a, ach } = await twoMembers(h);
    const other = await h.connect({ label: "other" });
    const och = other.socket.channel(`echo:${uniq("elsewhere")}`);
    await joinOk(och);
    const mark = other.rec.mark();
    const atA = waitForEvent(ach, "room_only");
    await pushAndReceive(ach, "room_only", { x: 1 });
    await atA;
    await assertNotReceived(h, other, och, "room_only", mark);
    assert.ok(a.rec.find(inFrame(topic, "room_only")));
  });

  h.test("many broadcasts from two senders all arrive at both sockets, per-sender order kept", async () => {
    const { ach, bch } = await twoMembers(h);
    const atA = collectEvents(ach, "burst");
    const atB = collectEvents(bch, "burst");
    const N = 40;
    await Promise.all([
      ...Array.from({ length: N }, (_, i) => pushAndReceive(ach, "burst", { from: "A", i })),
      ...Array.from({ length: N }, (_, i) => pushAndReceive(bch, "burst", { from: "B", i })),
    ]);
    await waitUntil(() => atA.length === 2 * N && atB.length === 2 * N, { what: `${2 * N} bursts on each socket` });
    for (const seen of [atA, atB]) {
      for (const from of ["A", "B"]) {
        const seq = seen.filter((e) => e.payload.from === from).map((e) => e.payload.i);
        assert.deepEqual(seq, Array.from({ length: N }, (_, i) => i), `order of ${from}'s broadcasts`);
      }
    }
  });

  h.test("a 300 KB text broadcast (sent as a fragmented WebSocket message) arrives whole at the other socket", async () => {
    const { ach, bch } = await twoMembers(h);
    const payload = { body: "é".repeat(150_000), tail: "end" };
    const atB = waitForEvent(bch, "big_msg");
    assert.deepEqual(await pushAndReceive(ach, "big_msg", payload), { status: "ok", response: {} });
    assert.deepEqual((await atB).payload, payload);
    // The socket goes on working after it.
    const small = waitForEvent(bch, "small_msg");
    await pushAndReceive(ach, "small_msg", { n: 1 });
    assert.deepEqual((await small).payload, { n: 1 });
  });
});
