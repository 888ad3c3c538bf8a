// Heartbeats: phoenix.js' periodic heartbeat, socket.ping() and the exact
// heartbeat reply frame.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { delay, joinOk, pushAndReceive, uniq, waitUntil, withTimeout } from "./lib/client.mjs";

const isHeartbeat = (e) => e.type === "frame" && e.dir === "out" && !e.binary && e.frame?.[2] === "phoenix" && e.frame?.[3] === "heartbeat";

describe("heartbeat", () => {
  const h = usePlume();

  h.test("heartbeatIntervalMs 100: every heartbeat gets [null, ref, phoenix, phx_reply, {response: {}, status: ok}]", async () => {
    const c = await h.connect({ heartbeatIntervalMs: 100 });
    await waitUntil(() => c.rec.frames("in").filter((e) => e.frame?.[2] === "phoenix").length >= 5, {
      timeout: 5_000,
      what: "five heartbeat replies",
    });
    const beats = c.rec.entries.filter(isHeartbeat);
    assert.ok(beats.length >= 5, `sent ${beats.length} heartbeats`);
    for (const beat of beats.slice(0, 5)) {
      const ref = beat.frame[1];
      assert.deepEqual(beat.frame, [null, ref, "phoenix", "heartbeat", {}]);
      const reply = c.rec.find((e) => e.type === "frame" && e.dir === "in" && e.frame?.[1] === ref, beat.seq + 1);
      assert.ok(reply, `no reply to heartbeat ref ${ref}`);
      assert.equal(reply.binary, false);
      assert.deepEqual(reply.frame, [null, ref, "phoenix", "phx_reply", { response: {}, status: "ok" }]);
    }
  });

  h.test("a socket that heartbeats every 250 ms stays connected (no heartbeat timeout)", async () => {
    // phoenix.js closes the socket when a reply takes longer than the interval;
    // 250 ms keeps that from tripping on a busy machine.
    const c = await h.connect({ heartbeatIntervalMs: 250 });
    const ch = c.socket.channel(`echo:${uniq()}`);
    await joinOk(ch);
    await delay(1_600);
    assert.ok(c.rec.entries.filter(isHeartbeat).length >= 5, "heartbeats kept flowing");
    assert.equal(c.rec.events("close").length, 0, "no close: phoenix.js never timed out a heartbeat");
    assert.equal(c.rec.events("open").length, 1);
    assert.equal(ch.state, "joined");
    assert.deepEqual(await pushAndReceive(ch, "echo", { still: "here" }), { status: "ok", response: { still: "here" } });
  });

  h.test("socket.ping() measures a round trip through a heartbeat", async () => {
    const c = await h.connect();
    const mark = c.rec.mark();
    let pushed;
    const rtt = await withTimeout(
      new Promise((resolve) => {
        pushed = c.socket.ping(resolve);
      }),
      3_000,
      "the ping callback",
    );
    assert.equal(pushed, true);
    assert.equal(typeof rtt, "number");
    assert.ok(Number.isFinite(rtt) && rtt >= 0 && rtt < 2_000, `rtt ${rtt}`);
    const beat = c.rec.find(isHeartbeat, mark);
    const ref = beat.frame[1];
    const reply = c.rec.find((e) => e.type === "frame" && e.dir === "in" && e.frame?.[1] === ref, mark);
    assert.deepEqual(reply.frame, [null, ref, "phoenix", "phx_reply", { response: {}, status: "ok" }]);
  });

  h.test("heartbeats are answered on a raw socket before any join, one reply per heartbeat, in order", async () => {
    const r = await h.raw();
    for (let i = 1; i <= 5; i++) r.send([null, String(i), "phoenix", "heartbeat", {}]);
    const replies = await r.nextN(5);
    replies.forEach((e, i) => {
      assert.equal(e.binary, false);
      assert.deepEqual(e.frame, [null, String(i + 1), "phoenix", "phx_reply", { response: {}, status: "ok" }]);
    });
  });
});
