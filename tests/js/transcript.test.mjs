// Whole scripted sessions compared frame by frame against the session shapes
// a real Phoenix server produces, as protocol-spec/lifecycle.md ("A phoenix.js
// session", "Heartbeat", "Leave") writes them down: ref/join_ref echo, join
// replies, unmatched-topic errors, heartbeats, leave.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { assertTranscript } from "./lib/frames.mjs";
import { join, joinOk, pushAndReceive, waitForEvent, withTimeout } from "./lib/client.mjs";

const ok = (response) => ({ response, status: "ok" });
const err = (response) => ({ response, status: "error" });
const UNMATCHED = err({ reason: "unmatched topic" });

describe("transcripts", () => {
  const h = usePlume();

  h.test("a phoenix.js session matches the chat-demo transcript shape frame by frame", async () => {
    const token = h.tokenFor("user1");
    const c = await h.connect({ params: { token, device_unique_id: "dev-A" } });
    const s = c.socket;
    const params = { token, device_unique_id: "dev-A", vsn: "2.0.0" };

    const room = s.channel("echo:1");
    assert.deepEqual(await joinOk(room), { auth_token: null, params, vsn: "2.0.0" });
    assert.deepEqual(await pushAndReceive(room, "echo", { body: "hi" }), { status: "ok", response: { body: "hi" } });
    const bcast = waitForEvent(room, "new_msg");
    assert.deepEqual(await pushAndReceive(room, "new_msg", { body: "all" }), { status: "ok", response: {} });
    await bcast;
    const pushed = waitForEvent(room, "push_back");
    assert.deepEqual(await pushAndReceive(room, "push_back", { n: 1 }), { status: "ok", response: {} });
    await pushed;
    await withTimeout(new Promise((resolve) => s.ping(resolve)), 3_000, "ping");

    const nope = s.channel("nope:1");
    assert.deepEqual(await join(nope), { status: "error", response: { reason: "unmatched topic" } });
    const nopeLeave = c.rec.mark();
    nope.leave(); // as in the chat demo: leave after a refused join
    await c.rec.waitForText("in", (f) => f[2] === "nope:1" && f[3] === "phx_reply", { from: nopeLeave });

    const leaveMark = c.rec.mark();
    room.leave();
    await c.rec.waitForText("in", (f) => f[2] === "echo:1" && f[3] === "phx_close", { from: leaveMark });

    const b = assertTranscript(c.rec.frames(), [
      ["out", ["$JR", "$JR", "echo:1", "phx_join", {}]],
      ["in", ["$JR", "$JR", "echo:1", "phx_reply", ok({ auth_token: null, params, vsn: "2.0.0" })]],
      ["out", ["$JR", "$R1", "echo:1", "echo", { body: "hi" }]],
      ["in", ["$JR", "$R1", "echo:1", "phx_reply", ok({ body: "hi" })]],
      ["out", ["$JR", "$R2", "echo:1", "new_msg", { body: "all" }]],
      {
        unordered: [
          ["in", [null, null, "echo:1", "new_msg", { body: "all" }]],
          ["in", ["$JR", "$R2", "echo:1", "phx_reply", ok({})]],
        ],
      },
      ["out", ["$JR", "$R3", "echo:1", "push_back", { n: 1 }]],
      {
        unordered: [
          ["in", ["$JR", null, "echo:1", "push_back", { n: 1 }]],
          ["in", ["$JR", "$R3", "echo:1", "phx_reply", ok({})]],
        ],
      },
      ["out", [null, "$HB", "phoenix", "heartbeat", {}]],
      ["in", [null, "$HB", "phoenix", "phx_reply", ok({})]],
      ["out", ["$JR2", "$JR2", "nope:1", "phx_join", {}]],
      ["in", [null, "$JR2", "nope:1", "phx_reply", UNMATCHED]],
      ["out", ["$JR2", "$R4", "nope:1", "phx_leave", {}]],
      ["in", ["$JR2", "$R4", "nope:1", "phx_reply", ok({})]],
      ["out", ["$JR", "$R5", "echo:1", "phx_leave", {}]],
      ["in", ["$JR", "$R5", "echo:1", "phx_reply", ok({})]],
      ["in", ["$JR", "$JR", "echo:1", "phx_close", {}]],
    ]);
    // phoenix.js refs are one increasing counter shared by the whole socket.
    const order = ["$JR", "$R1", "$R2", "$R3", "$HB", "$JR2", "$R4", "$R5"].map((k) => Number(b[k]));
    assert.deepEqual([...order].sort((x, y) => x - y), order, `refs increase: ${order}`);
  });

  h.test("raw V2 script: unjoined pushes, unmatched topics and leave (unjoined and refused topics)", async () => {
    const token = h.tokenFor("user1");
    const r = await h.raw(`token=${token}&vsn=2.0.0`);
    const script = [
      // push to a topic that was never joined, with and without join_ref
      [["5", "1", "echo:2", "hello", {}], [[null, "1", "echo:2", "phx_reply", UNMATCHED]]],
      [[null, "2", "echo:2", "hello", {}], [[null, "2", "echo:2", "phx_reply", UNMATCHED]]],
      // a topic without a route: join and push
      [["3", "3", "nope:1", "phx_join", {}], [[null, "3", "nope:1", "phx_reply", UNMATCHED]]],
      [[null, "4", "nope:1", "hello", {}], [[null, "4", "nope:1", "phx_reply", UNMATCHED]]],
      // join, then leave, then push to the left topic
      [
        ["6", "6", "echo:1", "phx_join", {}],
        [["6", "6", "echo:1", "phx_reply", ok({ auth_token: null, params: { token, vsn: "2.0.0" }, vsn: "2.0.0" })]],
      ],
      [["6", "7", "echo:1", "echo", { x: 1 }], [["6", "7", "echo:1", "phx_reply", ok({ x: 1 })]]],
      [
        ["6", "8", "echo:1", "phx_leave", {}],
        [
          ["6", "8", "echo:1", "phx_reply", ok({})],
          ["6", "6", "echo:1", "phx_close", {}],
        ],
      ],
      [["6", "9", "echo:1", "echo", {}], [[null, "9", "echo:1", "phx_reply", UNMATCHED]]],
      // leave of a topic that is not joined is acknowledged, join_ref echoed
      [["7", "10", "echo:3", "phx_leave", {}], [["7", "10", "echo:3", "phx_reply", ok({})]]],
    ];
    for (const [send, expected] of script) {
      r.send(send);
      for (const want of expected) {
        const got = await r.next();
        assert.equal(got.binary, false, `reply to ${JSON.stringify(send)} must be a text frame`);
        assert.deepEqual(got.frame, want, `reply to ${JSON.stringify(send)}`);
      }
    }
  });

  h.test("raw V2 script: heartbeat variants", async () => {
    const r = await h.raw("vsn=2.0.0");
    r.send([null, "1", "phoenix", "heartbeat", {}]);
    assert.deepEqual((await r.next()).frame, [null, "1", "phoenix", "phx_reply", ok({})]);
    // a heartbeat that carries a join_ref and a payload is still answered with join_ref null
    r.send(["9", "3", "phoenix", "heartbeat", { x: 1 }]);
    assert.deepEqual((await r.next()).frame, [null, "3", "phoenix", "phx_reply", ok({})]);
    // any other event on the phoenix topic is not routed
    r.send([null, "4", "phoenix", "something_else", {}]);
    assert.deepEqual((await r.next()).frame, [null, "4", "phoenix", "phx_reply", UNMATCHED]);
  });

  h.test("raw V2 script: join reply, channel push and phx_error keep the client's refs verbatim", async () => {
    const r = await h.raw("vsn=2.0.0");
    // refs are opaque strings; the server must not renumber them
    r.send(["j-42", "ref-a", "echo:refs", "phx_join", {}]);
    assert.deepEqual((await r.next()).frame, [
      "j-42",
      "ref-a",
      "echo:refs",
      "phx_reply",
      ok({ auth_token: null, params: h.params(), vsn: "2.0.0" }),
    ]);
    r.send(["j-42", "ref-b", "echo:refs", "push_back", { p: 1 }]);
    const two = (await r.nextN(2)).map((e) => e.frame);
    assert.deepEqual(
      two.find((f) => f[3] === "push_back"),
      ["j-42", null, "echo:refs", "push_back", { p: 1 }],
    );
    assert.deepEqual(
      two.find((f) => f[3] === "phx_reply"),
      ["j-42", "ref-b", "echo:refs", "phx_reply", ok({})],
    );
    r.send(["j-42", "ref-c", "echo:refs", "crash", {}]);
    assert.deepEqual((await r.next()).frame, ["j-42", "j-42", "echo:refs", "phx_error", { reason: "channel_crash" }]);
    // after the crash the topic is free for a fresh join
    r.send(["j-43", "j-43", "echo:refs", "phx_join", {}]);
    const rejoin = (await r.next()).frame;
    assert.deepEqual(rejoin.slice(0, 4), ["j-43", "j-43", "echo:refs", "phx_reply"]);
    assert.equal(rejoin[4].status, "ok");
  });
});
