// Graceful drain behind a real load balancer: three plume nodes sharing a private
// redis-server, nginx in front (the docker-compose.yml topology as local processes), real
// phoenix.js clients. SIGTERM on one node: its /readyz turns 503, its sockets are closed with
// 1001 in batches (2 every 1 s here), and every one of its clients reconnects through nginx to
// another node and rejoins its chat, where messages keep flowing.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { signJwt } from "./lib/auth.mjs";
import { api, httpGet, startCluster } from "./lib/cluster.mjs";
import { collectEvents, createClient, joinOk, pushAndReceive, waitUntil } from "./lib/client.mjs";

const API_KEY = "drain-api-key";
const BATCH = 2;
const INTERVAL_MS = 1_000;
let cluster;
const clients = [];

describe("drain: SIGTERM on one of 3 nodes behind nginx", { timeout: 120_000 }, () => {
  before(async () => {
    cluster = await startCluster({
      nodes: 3,
      args: ["--api-key", API_KEY, "--drain-batch-size", String(BATCH), "--drain-interval", String(INTERVAL_MS / 1000)],
    });
  });

  after(async () => {
    for (const c of clients.splice(0)) c.socket.disconnect();
    await cluster?.destroy();
  });

  it("closes the node's sockets with 1001 in batches and every client rejoins on another node", async (t) => {
    const users = Array.from({ length: 12 }, (_, i) => `d${i}`);
    for (const u of users) {
      const { status } = await api(cluster.servers[0].port, "PUT", `/api/chats/drain/members/${u}`, API_KEY);
      assert.equal(status, 200);
    }
    // Round robin spreads the twelve sockets over the three nodes.
    const closes = new Map();
    const channels = [];
    for (const u of users) {
      const client = createClient(cluster.nginx.url, {
        label: u,
        params: { token: signJwt(u), device_unique_id: `${u}-dev` },
      });
      clients.push(client);
      client.socket.onClose((event) => {
        if (!closes.has(u)) closes.set(u, { at: Date.now(), code: event.code, reason: event.reason });
      });
      client.socket.connect();
      const ch = client.socket.channel("chat:drain", {});
      await joinOk(ch);
      channels.push(ch);
    }
    const victim = cluster.servers[0];
    const onVictim = JSON.parse((await httpGet(victim.port, "/healthz")).body).connections;
    assert.ok(onVictim >= 2 * BATCH, `round robin put ${onVictim} sockets on the victim; want at least ${2 * BATCH}`);
    assert.equal((await httpGet(victim.port, "/readyz")).status, 200);

    const stopped = victim.stop({ signal: "SIGTERM", timeoutMs: 30_000 });
    // The first batch closes at once; from then on, until the drain ends, the node is unready.
    await waitUntil(() => closes.size > 0, { timeout: 5_000, what: "the first drained socket to close" });
    const ready = await httpGet(victim.port, "/readyz");
    assert.equal(ready.status, 503, ready.body);
    assert.match(ready.body, /stopping/);
    const metrics = await httpGet(victim.port, "/metrics");
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /^plume_draining 1$/m);
    assert.match(metrics.body, /^plume_drain_closes_total [1-9]\d*$/m);
    await waitUntil(() => closes.size === onVictim, {
      timeout: 10_000,
      what: `all ${onVictim} sockets of the drained node to close`,
    });
    const exit = await stopped;
    assert.equal(exit.code, 0, `the drained node exits cleanly: ${JSON.stringify(exit)}`);
    t.diagnostic(`drained ${onVictim} sockets; closes at +ms: ${[...closes.values()].map((c) => c.at - Math.min(...[...closes.values()].map((x) => x.at))).sort((a, b) => a - b).join(", ")}`);

    // Every close is a 1001 "server shutting down".
    for (const [u, c] of closes) {
      assert.equal(c.code, 1001, `${u}: ${JSON.stringify(c)}`);
      assert.match(c.reason, /shutting down/, u);
    }
    // In batches of BATCH, INTERVAL_MS apart (lower bounds: the server never closes a batch
    // early; a busy machine can only make one later).
    const at = [...closes.values()].map((c) => c.at).sort((a, b) => a - b);
    const batches = Math.ceil(onVictim / BATCH);
    for (let b = 1; b < batches; b++) {
      const gap = at[b * BATCH] - at[b * BATCH - 1];
      assert.ok(gap >= INTERVAL_MS / 2, `batch ${b + 1} came ${gap} ms after batch ${b}: ${at.map((x) => x - at[0])}`);
    }
    assert.ok(at[at.length - 1] - at[0] >= (batches - 1) * INTERVAL_MS - INTERVAL_MS / 2, `${at.map((x) => x - at[0])}`);

    // Every client is connected and joined again, now on the two other nodes.
    await waitUntil(() => clients.every((c) => c.socket.isConnected()) && channels.every((ch) => ch.state === "joined"), {
      timeout: 15_000,
      what: "every client reconnected and rejoined",
    });
    const left = await Promise.all(
      cluster.servers.slice(1).map(async (s) => JSON.parse((await httpGet(s.port, "/healthz")).body).connections),
    );
    assert.equal(left[0] + left[1], users.length, `sockets on the surviving nodes: ${left}`);

    // And the chat works for all of them: one message reaches the eleven others.
    const inboxes = channels.map((ch) => collectEvents(ch, "receive_message"));
    const sent = await pushAndReceive(channels[0], "send_message", { content: "after the drain", mobile_ref_id: "drain-1" });
    assert.equal(sent.status, "ok");
    await waitUntil(() => inboxes.slice(1).every((inbox) => inbox.length === 1), {
      timeout: 10_000,
      what: "the message to reach every other member",
    });
  });
});
