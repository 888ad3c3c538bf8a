// Binary (ArrayBuffer) payloads through phoenix.js in both directions, with
// the exact V2 binary frame layouts checked on the wire.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import {
  arrayBufferOf,
  encodeBroadcast,
  encodeClientPush,
  encodeReply,
  encodeServerPush,
  joinOk,
  pushAndReceive,
  toBuffer,
  uniq,
  waitForEvent,
} from "./lib/client.mjs";

const allBytes = () => arrayBufferOf(Array.from({ length: 256 }, (_, i) => i));

describe("binary payloads", () => {
  const h = usePlume();

  h.test("echo of an ArrayBuffer comes back as a binary reply frame and an ArrayBuffer response", async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const payload = allBytes();
    const mark = c.rec.mark();
    const result = await pushAndReceive(ch, "echo", payload);
    assert.equal(result.status, "ok");
    assert.ok(result.response instanceof ArrayBuffer, `response is ${Object.prototype.toString.call(result.response)}`);
    assert.deepEqual(toBuffer(result.response), toBuffer(payload));

    // What phoenix.js sent: kind 0, 5-byte header.
    const sent = await c.rec.waitForBinary("out", (f) => f.event === "echo", { from: mark });
    const jr = ch.joinRef();
    const ref = sent.frame.ref;
    assert.equal(sent.frame.joinRef, jr);
    assert.deepEqual(sent.bytes, encodeClientPush({ joinRef: jr, ref, topic, event: "echo", payload }));

    // What the server answered: kind 1 reply with status "ok".
    const reply = await c.rec.waitForBinary("in", (f) => f.kind === "reply", { from: mark });
    assert.deepEqual(reply.bytes, encodeReply({ joinRef: jr, ref, topic, status: "ok", payload }));
  });

  h.test("binary echo preserves empty, one-byte and 200 KiB payloads", async () => {
    const c = await h.connect();
    const ch = c.socket.channel(`echo:${uniq()}`);
    await joinOk(ch);
    const big = new Uint8Array(200 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
    for (const payload of [new ArrayBuffer(0), arrayBufferOf([0xff]), big.buffer]) {
      const result = await pushAndReceive(ch, "echo", payload);
      assert.equal(result.status, "ok");
      assert.ok(result.response instanceof ArrayBuffer);
      assert.equal(result.response.byteLength, payload.byteLength);
      assert.ok(toBuffer(result.response).equals(toBuffer(payload)), `payload of ${payload.byteLength} bytes differs`);
    }
  });

  h.test("JSON and binary pushes interleave on one channel, each reply in its own encoding", async () => {
    const c = await h.connect();
    const ch = c.socket.channel(`echo:${uniq()}`);
    await joinOk(ch);
    const [a, b, d] = await Promise.all([
      pushAndReceive(ch, "echo", { json: 1 }),
      pushAndReceive(ch, "echo", arrayBufferOf([1, 2, 3])),
      pushAndReceive(ch, "echo", { json: 2 }),
    ]);
    assert.deepEqual(a, { status: "ok", response: { json: 1 } });
    assert.ok(b.response instanceof ArrayBuffer);
    assert.deepEqual([...new Uint8Array(b.response)], [1, 2, 3]);
    assert.deepEqual(d, { status: "ok", response: { json: 2 } });
  });

  h.test("a broadcast event with an ArrayBuffer payload reaches another socket as a binary broadcast (kind 2)", async () => {
    const sender = await h.connect({ label: "sender" });
    const receiver = await h.connect({ label: "receiver" });
    const topic = `echo:${uniq("bin")}`;
    const sch = sender.socket.channel(topic);
    const rch = receiver.socket.channel(topic);
    await joinOk(sch);
    await joinOk(rch);

    const payload = arrayBufferOf([0, 1, 2, 250, 251, 252, 253, 254, 255, 10, 13]);
    const atReceiver = waitForEvent(rch, "blob");
    const atSender = waitForEvent(sch, "blob");
    const result = await pushAndReceive(sch, "blob", payload);
    assert.deepEqual(result, { status: "ok", response: {} });

    for (const [who, p] of [
      ["receiver", atReceiver],
      ["sender", atSender],
    ]) {
      const ev = await p;
      assert.ok(ev.payload instanceof ArrayBuffer, `${who} got ${Object.prototype.toString.call(ev.payload)}`);
      assert.deepEqual(toBuffer(ev.payload), toBuffer(payload), `${who} payload`);
    }

    const frame = await receiver.rec.waitForBinary("in", (f) => f.event === "blob");
    assert.deepEqual(frame.bytes, encodeBroadcast({ topic, event: "blob", payload }));
    // The reply to the sender is a JSON text reply: {} is not binary.
    const ref = (await sender.rec.waitForBinary("out", (f) => f.event === "blob")).frame.ref;
    const reply = await sender.rec.waitForText("in", (f) => f[3] === "phx_reply" && f[1] === ref);
    assert.deepEqual(reply.frame, [sch.joinRef(), ref, topic, "phx_reply", { response: {}, status: "ok" }]);
  });

  h.test("push_back with an ArrayBuffer payload arrives as a binary channel push (kind 0) with the join_ref", async () => {
    const c = await h.connect();
    const topic = `echo:${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const payload = arrayBufferOf([9, 8, 7, 6]);
    const got = waitForEvent(ch, "push_back");
    assert.deepEqual(await pushAndReceive(ch, "push_back", payload), { status: "ok", response: {} });
    const ev = await got;
    assert.ok(ev.payload instanceof ArrayBuffer);
    assert.deepEqual([...new Uint8Array(ev.payload)], [9, 8, 7, 6]);
    const frame = await c.rec.waitForBinary("in", (f) => f.event === "push_back");
    assert.deepEqual(frame.bytes, encodeServerPush({ joinRef: ch.joinRef(), topic, event: "push_back", payload }));
  });

  h.test("binary metadata with multi-byte UTF-8 topic is length-counted in bytes", async () => {
    const c = await h.connect();
    const topic = `echo:ünïcødé-${uniq()}`;
    const ch = c.socket.channel(topic);
    await joinOk(ch);
    const payload = arrayBufferOf([42]);
    const result = await pushAndReceive(ch, "echo", payload);
    assert.equal(result.status, "ok");
    assert.deepEqual([...new Uint8Array(result.response)], [42]);
    const reply = await c.rec.waitForBinary("in", (f) => f.kind === "reply");
    assert.equal(reply.frame.topic, topic);
  });
});
