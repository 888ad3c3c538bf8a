// Several nodes behind a real load balancer: a private redis-server, three plume nodes with
// --redis-url and nginx in front (the docker-compose.yml topology as local processes), driven
// by the real phoenix.js client.

import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";
import { Presence } from "phoenix";
import { signJwt } from "./lib/auth.mjs";
import { api, httpGet, startCluster } from "./lib/cluster.mjs";
import {
  collectEvents,
  createClient,
  delay,
  joinOk,
  pushAndReceive,
  waitForEvent,
  waitUntil,
} from "./lib/client.mjs";

const API_KEY = "cluster-api-key";
let cluster;
const clients = [];

function connect(url, user) {
  const client = createClient(url, { label: user, params: { token: signJwt(user), device_unique_id: `${user}-dev` } });
  clients.push(client);
  client.socket.connect();
  return client;
}

function nodeUrl(i) {
  return cluster.servers[i].url;
}

const http = (i) => cluster.servers[i].port;

async function member(chat, user) {
  const { status } = await api(http(0), "PUT", `/api/chats/${chat}/members/${user}`, API_KEY);
  assert.equal(status, 200);
}

async function chatChannel(client, chat) {
  const ch = client.socket.channel(`chat:${chat}`, {});
  await joinOk(ch);
  return ch;
}

function send(ch, content, ref) {
  return pushAndReceive(ch, "send_message", { content, mobile_ref_id: ref });
}

describe("cluster: 3 nodes + redis + nginx", { timeout: 120_000 }, () => {
  before(async () => {
    cluster = await startCluster({ nodes: 3, args: ["--api-key", API_KEY] });
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.disconnect();
  });

  after(async () => {
    if (cluster) await cluster.destroy();
  });

  it("chat messages cross nodes both ways exactly once", async () => {
    await member("x", "alice");
    await member("x", "bob");
    const alice = connect(nodeUrl(0), "alice");
    const bob = connect(nodeUrl(1), "bob");
    const ca = await chatChannel(alice, "x");
    const cb = await chatChannel(bob, "x");
    const atBob = collectEvents(cb, "receive_message");
    const atAlice = collectEvents(ca, "receive_message");
    for (let i = 0; i < 5; i++) {
      assert.equal((await send(ca, `a${i}`, `a${i}`)).status, "ok");
      assert.equal((await send(cb, `b${i}`, `b${i}`)).status, "ok");
    }
    await waitUntil(() => atBob.length >= 5 && atAlice.length >= 5, { what: "deliveries on both nodes" });
    await delay(300); // anything extra would be a duplicate
    assert.deepEqual(atBob.map((e) => e.payload.content), ["a0", "a1", "a2", "a3", "a4"]);
    assert.deepEqual(atAlice.map((e) => e.payload.content), ["b0", "b1", "b2", "b3", "b4"]);
    assert.ok(atBob.every((e) => e.payload.sender_id === "alice" && e.payload.chat_id === "x"));
  });

  it("notifications and pending notifications reach users on other nodes", async () => {
    for (const u of ["alice", "carol", "dave"]) await member("n", u);
    const alice = connect(nodeUrl(0), "alice");
    const carol = connect(nodeUrl(2), "carol");
    const ca = await chatChannel(alice, "n");
    const notes = carol.socket.channel("notifications:carol", {});
    await joinOk(notes);
    await delay(100);
    const live = waitForEvent(notes, "new_notification");
    assert.equal((await send(ca, "hello", "n1")).status, "ok");
    assert.equal((await live).payload.content, "hello");
    // dave was offline on every node; he connects through the load balancer later.
    const dave = connect(cluster.nginx.url, "dave");
    const daveNotes = dave.socket.channel("notifications:dave", {});
    const pending = waitForEvent(daveNotes, "pending_notification");
    const all = waitForEvent(daveNotes, "pending_notifications");
    await joinOk(daveNotes);
    assert.equal((await pending).payload.content, "hello");
    assert.equal((await all).payload.notifications.length, 1);
  });

  it("clients of a killed node reconnect through nginx to the others and rejoin", async () => {
    await member("k", "u1");
    await member("k", "u2");
    await member("k", "u3");
    // A fresh round robin puts three sockets on three different nodes.
    const users = ["u1", "u2", "u3"].map((u) => connect(cluster.nginx.url, u));
    const channels = [];
    for (const c of users) channels.push(await chatChannel(c, "k"));
    const closes = users.map((c) => {
      let closed = false;
      c.socket.onClose(() => {
        closed = true;
      });
      return () => closed;
    });
    const victim = cluster.servers[0];
    await victim.stop({ signal: "SIGKILL" });
    // The socket that was on the killed node sees its connection drop, reconnects through
    // nginx (which skips the dead node) and rejoins chat:k.
    await waitUntil(() => closes.some((f) => f()), { timeout: 5_000, what: "a socket of the killed node to close" });
    await waitUntil(() => users.every((c) => c.socket.isConnected()) && channels.every((ch) => ch.state === "joined"), {
      timeout: 15_000,
      what: "every client reconnected and rejoined",
    });
    // Everyone, on the surviving nodes, still gets everyone's messages.
    const inbox = channels.map((ch) => collectEvents(ch, "receive_message"));
    assert.equal((await send(channels[0], "after the crash", "k1")).status, "ok");
    await waitUntil(() => inbox[1].length === 1 && inbox[2].length === 1, { what: "delivery after the crash" });
    assert.equal(inbox[0].length, 0, "the sender does not receive its own message");
    await victim.start(`127.0.0.1:${victim.port}`, { attempts: 5 });
  });

  it("a client of a killed node rejoins through nginx on another node and recovers the 20 messages it missed", async () => {
    const chat = "rec";
    await member(chat, "alice");
    await member(chat, "bob");
    const counts = async () =>
      Promise.all([0, 1, 2].map(async (i) => JSON.parse((await httpGet(http(i), "/healthz")).body).connections));
    const before = await counts();
    // Bob comes through the load balancer; reconnects wait 300 ms, so the messages below are
    // sent while he is away.
    const bob = createClient(cluster.nginx.url, {
      label: "bob",
      params: { token: signJwt("bob") },
      reconnectAfterMs: () => 300,
    });
    clients.push(bob);
    bob.socket.connect();
    await waitUntil(() => bob.socket.isConnected(), { what: "bob to connect" });
    const afterConnect = await counts();
    const victimIndex = afterConnect.findIndex((n, i) => n > before[i]);
    assert.ok(victimIndex >= 0, `bob's node not found: ${before} -> ${afterConnect}`);
    const alice = connect(nodeUrl((victimIndex + 1) % 3), "alice");
    const ca = await chatChannel(alice, chat);
    const state = { lastSeq: 0, epoch: null, seen: [], replies: [] };
    const cb = bob.socket.channel(`chat:${chat}`, () =>
      state.epoch === null ? {} : { last_seq: state.lastSeq, epoch: state.epoch },
    );
    cb.on("receive_message", (m) => {
      state.seen.push(m.seq);
      state.lastSeq = Math.max(state.lastSeq, m.seq);
    });
    cb.join().receive("ok", (reply) => {
      state.replies.push(reply);
      state.epoch = reply.epoch;
      if (reply.recovered !== true) state.lastSeq = Math.max(state.lastSeq, reply.last_seq);
    });
    await waitUntil(() => state.replies.length === 1, { what: "bob's join" });
    const base = state.replies[0].last_seq;
    for (let i = 0; i < 3; i++) assert.equal((await send(ca, `live${i}`, `rl${i}`)).status, "ok");
    await waitUntil(() => state.seen.length === 3, { what: "three live messages" });

    const victim = cluster.servers[victimIndex];
    await victim.stop({ signal: "SIGKILL" });
    for (let i = 0; i < 20; i++) assert.equal((await send(ca, `away${i}`, `ra${i}`)).status, "ok");
    await waitUntil(() => state.replies.length === 2, { timeout: 15_000, what: "bob to rejoin through nginx" });
    assert.equal(state.replies[1].recovered, true, JSON.stringify(state.replies[1]));
    await waitUntil(() => state.seen.length === 23, { timeout: 5_000, what: "the 20 missed messages" });
    for (let i = 0; i < 5; i++) assert.equal((await send(ca, `after${i}`, `rf${i}`)).status, "ok");
    await waitUntil(() => state.seen.length === 28, { what: "live messages after the recovery" });
    await delay(300);
    const expected = Array.from({ length: 28 }, (_, i) => base + 1 + i);
    assert.deepEqual(state.seen, expected, "each message once, in order");
    await victim.start(`127.0.0.1:${victim.port}`, { attempts: 5 });
  });

  it("notifications for a user whose node was killed wait as pending, though the dead node still counts them as online", async () => {
    const chat = "dead";
    await member(chat, "alice");
    await member(chat, "carol");
    const counts = async () =>
      Promise.all([0, 1, 2].map(async (i) => JSON.parse((await httpGet(http(i), "/healthz")).body).connections));
    const before = await counts();
    const carol = createClient(cluster.nginx.url, {
      label: "carol",
      params: { token: signJwt("carol") },
      reconnectAfterMs: () => 1_000,
    });
    clients.push(carol);
    carol.socket.connect();
    const notes = carol.socket.channel("notifications:carol", {});
    await joinOk(notes);
    const afterConnect = await counts();
    const victimIndex = afterConnect.findIndex((n, i) => n > before[i]);
    assert.ok(victimIndex >= 0, `carol's node not found: ${before} -> ${afterConnect}`);
    const alice = connect(nodeUrl((victimIndex + 1) % 3), "alice");
    const ca = await chatChannel(alice, chat);
    const live = collectEvents(notes, "new_notification");
    const pending = collectEvents(notes, "pending_notification");
    assert.equal((await send(ca, "before", "d0")).status, "ok");
    await waitUntil(() => live.length === 1, { what: "a live notification" });
    await delay(100);

    const victim = cluster.servers[victimIndex];
    await victim.stop({ signal: "SIGKILL" });
    // Within the node TTL carol still counts as online on the dead node.
    for (let i = 1; i <= 5; i++) assert.equal((await send(ca, `while away ${i}`, `d${i}`)).status, "ok");
    await waitUntil(() => notes.state === "joined" && carol.socket.isConnected() && pending.length >= 5, {
      timeout: 15_000,
      what: "carol back through nginx with the five as pending",
    });
    const got = [...live, ...pending].map((e) => e.payload.content);
    for (let i = 1; i <= 5; i++) assert.ok(got.includes(`while away ${i}`), `missing "while away ${i}": ${got}`);
    await victim.start(`127.0.0.1:${victim.port}`, { attempts: 5 });
  });

  it("the Presence helper lists users of every node, and a killed node's users leave within the node TTL", async () => {
    for (const u of ["pa", "pb", "pc"]) await member("pres", u);
    const onNode = [connect(nodeUrl(0), "pc"), connect(nodeUrl(1), "pa"), connect(nodeUrl(2), "pb")];
    const helpers = [];
    for (const c of onNode) {
      const ch = c.socket.channel("chat:pres", {});
      const presence = new Presence(ch);
      await joinOk(ch);
      helpers.push(presence);
    }
    const users = (p) => p.list((user) => user).sort();
    await waitUntil(() => helpers.every((p) => users(p).join() === "pa,pb,pc"), {
      what: "every helper to list the users of all three nodes",
    });
    const { json } = await api(http(1), "GET", "/api/chats/pres/presence", API_KEY);
    assert.deepEqual(Object.keys(json).sort(), ["pa", "pb", "pc"]);
    assert.equal(json.pc.metas[0].device_unique_id, "pc-dev");

    const victim = cluster.servers[0];
    const killed = Date.now();
    await victim.stop({ signal: "SIGKILL" });
    await waitUntil(() => users(helpers[1]).join() === "pa,pb" && users(helpers[2]).join() === "pa,pb", {
      timeout: 6_000,
      interval: 20,
      what: "the killed node's user to leave the other nodes' helpers",
    });
    const tookMs = Date.now() - killed;
    // --node-ttl 3: the record expires at most 3 s after the kill, the sweep runs every 0.3 s.
    assert.ok(tookMs < 3_300 + 500, `left after ${tookMs} ms`);
    const after = await api(http(2), "GET", "/api/chats/pres/presence", API_KEY);
    assert.deepEqual(Object.keys(after.json).sort(), ["pa", "pb"]);
    await victim.start(`127.0.0.1:${victim.port}`, { attempts: 5 });
  });

  it("after redis-server restarts, cross-node delivery resumes within seconds and nothing stored is lost", async () => {
    await member("r", "alice");
    await member("r", "bob");
    await member("r", "erin");
    const alice = connect(nodeUrl(1), "alice");
    const bob = connect(nodeUrl(2), "bob");
    const ca = await chatChannel(alice, "r");
    const cb = await chatChannel(bob, "r");
    // erin is offline: this message waits in Redis as a pending notification.
    assert.equal((await send(ca, "stored before", "r0")).status, "ok");
    assert.equal((await httpGet(http(1), "/readyz")).status, 200);

    await cluster.redis.stop();
    await waitUntil(async () => (await httpGet(http(1), "/readyz")).status === 503, {
      timeout: 10_000,
      what: "/readyz to report the Redis outage",
    });
    const failed = await send(ca, "during the outage", "r1");
    assert.equal(failed.status, "error");
    assert.equal(failed.response.reason, "storage_unavailable");

    await cluster.redis.start();
    const started = Date.now();
    const atBob = collectEvents(cb, "receive_message");
    let n = 0;
    await waitUntil(
      async () => {
        n += 1;
        const r = await send(ca, `after ${n}`, `r-after-${n}`);
        await delay(200);
        return r.status === "ok" && atBob.length > 0;
      },
      { timeout: 20_000, interval: 100, what: "cross-node delivery after the Redis restart" },
    );
    const resumedMs = Date.now() - started;
    assert.ok(resumedMs < 20_000, `resumed after ${resumedMs} ms`);
    await waitUntil(async () => (await httpGet(http(1), "/readyz")).status === 200, {
      timeout: 10_000,
      what: "/readyz to recover",
    });
    // What was stored before the restart is still there.
    const { json } = await api(http(0), "GET", "/api/chats/r/members", API_KEY);
    assert.deepEqual(json.members, ["alice", "bob", "erin"]);
    const erin = connect(cluster.nginx.url, "erin");
    const notes = erin.socket.channel("notifications:erin", {});
    const all = waitForEvent(notes, "pending_notifications");
    await joinOk(notes);
    const contents = (await all).payload.notifications.map((x) => x.content);
    assert.equal(contents[0], "stored before");
    assert.ok(!contents.includes("during the outage"), "a failed send must not leave a notification");
  });
});

