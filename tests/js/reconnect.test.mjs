// Server restarts: SIGTERM closes sockets with 1001, phoenix.js reconnects by
// itself, rejoins its channels, and broadcasts flow again.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { joinOk, pushAndReceive, uniq, waitForEvent, waitUntil } from "./lib/client.mjs";

const RESTART_TEST_TIMEOUT_MS = 40_000;

describe("reconnect after a server restart", () => {
  const h = usePlume();

  h.test(
    "SIGTERM closes sockets with 1001; phoenix.js reconnects, rejoins and receives broadcasts again",
    async () => {
      const fast = { reconnectAfterMs: () => 50, rejoinAfterMs: () => 50 };
      const topic = `echo:${uniq("restart")}`;
      const tokenA = h.tokenFor("user-a");
      const a = await h.connect({ label: "A", params: { token: tokenA }, ...fast });
      const b = await h.connect({ label: "B", params: { token: h.tokenFor("user-b") }, ...fast });
      const ach = a.socket.channel(topic);
      const bch = b.socket.channel(topic);
      await joinOk(ach);
      await joinOk(bch);
      const jrA = ach.joinRef();
      const jrB = bch.joinRef();

      const closeCodes = { A: [], B: [] };
      a.socket.onClose((e) => closeCodes.A.push(e.code));
      b.socket.onClose((e) => closeCodes.B.push(e.code));
      const errors = [];
      ach.onError((reason) => errors.push(reason));

      const exit = await h.server.restart();
      assert.equal(exit.forced, false, `server did not exit within 10 s of SIGTERM (${JSON.stringify(exit)})`);

      await waitUntil(() => closeCodes.A.length > 0 && closeCodes.B.length > 0, { what: "both sockets to see a close" });
      assert.equal(closeCodes.A[0], 1001, `A close codes: ${closeCodes.A}`);
      assert.equal(closeCodes.B[0], 1001, `B close codes: ${closeCodes.B}`);
      assert.deepEqual(errors[0], { source: "transport", reason: "connection_closed" });

      // phoenix.js reconnects by itself and rejoins with a new join_ref.
      await waitUntil(() => a.socket.isConnected() && b.socket.isConnected(), { timeout: 10_000, what: "both sockets reconnected" });
      await waitUntil(() => ach.state === "joined" && bch.state === "joined", { timeout: 10_000, what: "both channels rejoined" });
      assert.notEqual(ach.joinRef(), jrA);
      assert.notEqual(bch.joinRef(), jrB);
      assert.ok(a.rec.transports.length >= 2, "A opened a new WebSocket");

      // The rejoin went through the new server process, with the same connect params.
      const rejoinReply = a.rec.find(
        (e) => e.type === "frame" && e.dir === "in" && e.frame?.[2] === topic && e.frame?.[3] === "phx_reply" && e.frame?.[0] === ach.joinRef(),
      );
      assert.ok(rejoinReply, "the rejoin reply was recorded");
      assert.equal(rejoinReply.conn, a.rec.transports.length);
      assert.deepEqual(rejoinReply.frame[4], {
        response: { auth_token: null, params: { token: tokenA, vsn: "2.0.0" }, vsn: "2.0.0" },
        status: "ok",
      });

      // A broadcast after the restart reaches the other rejoined socket.
      const atB = waitForEvent(bch, "after_restart");
      assert.deepEqual(await pushAndReceive(ach, "after_restart", { ok: true }), { status: "ok", response: {} });
      assert.deepEqual((await atB).payload, { ok: true });
    },
    { timeout: RESTART_TEST_TIMEOUT_MS },
  );

  h.test(
    "a socket without channels is closed with 1001 on SIGTERM and reconnects",
    async () => {
      const c = await h.connect({ reconnectAfterMs: () => 50 });
      const codes = [];
      c.socket.onClose((e) => codes.push(e.code));
      const opensBefore = c.rec.events("open").length;
      await h.server.restart();
      await waitUntil(() => codes.length > 0, { what: "the close event" });
      assert.equal(codes[0], 1001);
      await waitUntil(() => c.socket.isConnected() && c.rec.events("open").length > opensBefore, {
        timeout: 10_000,
        what: "the socket to reconnect",
      });
      const ch = c.socket.channel(`echo:${uniq()}`);
      await joinOk(ch);
      assert.deepEqual(await pushAndReceive(ch, "echo", { back: 1 }), { status: "ok", response: { back: 1 } });
    },
    { timeout: RESTART_TEST_TIMEOUT_MS },
  );

  h.test(
    "pushes made while the server is down are delivered after the rejoin",
    async () => {
      const c = await h.connect({ reconnectAfterMs: () => 50, rejoinAfterMs: () => 50, timeout: 15_000 });
      const ch = c.socket.channel(`echo:${uniq()}`);
      await joinOk(ch);
      const codes = [];
      c.socket.onClose((e) => codes.push(e.code));
      await h.server.stop();
      await waitUntil(() => codes.length > 0 && ch.state !== "joined", { what: "the channel to notice the shutdown" });
      // Buffered in the channel until it has rejoined on the new server.
      const pending = new Promise((resolve) => {
        ch.push("echo", { queued: true }, 15_000)
          .receive("ok", (r) => resolve({ status: "ok", response: r }))
          .receive("error", (r) => resolve({ status: "error", response: r }))
          .receive("timeout", () => resolve({ status: "timeout" }));
      });
      await h.server.start(`127.0.0.1:${h.server.port}`, { attempts: 10 });
      assert.deepEqual(await pending, { status: "ok", response: { queued: true } });
      assert.equal(ch.state, "joined");
    },
    { timeout: RESTART_TEST_TIMEOUT_MS },
  );
});
