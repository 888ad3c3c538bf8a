// LongPoll in a cluster: three plume nodes behind nginx round robin (no sticky sessions), so
// consecutive polls and posts of one client land on different nodes and are relayed through
// Redis to the node that holds the session; and a session whose node dies answers 410, after
// which phoenix.js starts a new session elsewhere and rejoins.

import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";
import { signJwt } from "./lib/auth.mjs";
import { api, startCluster } from "./lib/cluster.mjs";
import { collectEvents, createClient, delay, joinOk, pushAndReceive, waitUntil } from "./lib/client.mjs";

const API_KEY = "lp-cluster-api-key";
let cluster;
const clients = [];

function connect(url, user, { longpoll = true } = {}) {
  const client = createClient(url, { label: user, longpoll, params: { token: signJwt(user), device_unique_id: `${user}-dev` } });
  clients.push(client);
  client.socket.connect();
  return client;
}

async function member(chat, user) {
  const { status } = await api(cluster.servers[0].port, "PUT", `/api/chats/${chat}/members/${user}`, API_KEY);
  assert.equal(status, 200);
}

async function chatChannel(client, chat) {
  const ch = client.socket.channel(`chat:${chat}`, {});
  await joinOk(ch);
  return ch;
}

/** The node a LongPoll client's session token names (`plp.<node>.<id>.<sig>`). */
function holder(client) {
  const token = client.socket.conn?.token;
  return token ? token.split(".").slice(1, -2).join(".") : null;
}

describe("LongPoll cluster: 3 nodes + redis + nginx round robin", { timeout: 120_000 }, () => {
  before(async () => {
    cluster = await startCluster({ nodes: 3, args: ["--api-key", API_KEY, "--longpoll-window", "2"] });
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.disconnect();
  });
  after(async () => {
    if (cluster) await cluster.destroy();
  });

  it("LongPoll and WebSocket clients chat through nginx; every message arrives once", async () => {
    const users = ["lp1", "lp2", "lp3", "ws1"];
    for (const u of users) await member("lpc", u);
    const cs = users.map((u) => connect(cluster.nginx.url, u, { longpoll: u.startsWith("lp") }));
    const channels = [];
    for (const c of cs) channels.push(await chatChannel(c, "lpc"));
    const holders = new Set(cs.slice(0, 3).map(holder));
    assert.ok(holders.size >= 2, `sessions spread over nodes: ${[...holders]}`);
    const inbox = channels.map((ch) => collectEvents(ch, "receive_message"));
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < cs.length; i++) {
        const reply = await pushAndReceive(channels[i], "send_message", { content: `${users[i]}-${round}`, mobile_ref_id: `${users[i]}-${round}` });
        assert.equal(reply.status, "ok");
      }
    }
    const expected = (i) => [0, 1, 2].flatMap((r) => users.filter((_, j) => j !== i).map((u) => `${u}-${r}`)).sort();
    await waitUntil(() => inbox.every((got) => got.length >= 9), { timeout: 10_000, what: "9 messages at every client" });
    await delay(500); // anything more would be a duplicate
    inbox.forEach((got, i) => assert.deepEqual(got.map((e) => e.payload.content).sort(), expected(i), users[i]));
  });

  it("a session whose node is killed answers 410; phoenix.js starts a new session on another node and rejoins", async () => {
    const users = ["k1", "k2", "k3"];
    for (const u of users) await member("lpk", u);
    const cs = users.map((u) => connect(cluster.nginx.url, u));
    const channels = [];
    for (const c of cs) channels.push(await chatChannel(c, "lpk"));
    // Whichever node holds the first client's session is killed (round robin decides which,
    // and other tests' requests move it, so no particular node can be expected).
    const victimIdx = 0;
    const victimNode = holder(cs[victimIdx]);
    const server = cluster.servers[Number(/^node-(\d+)$/.exec(victimNode ?? "")?.[1]) - 1];
    assert.ok(server, `the first client's session names a node: ${cs.map(holder)}`);
    const victim = cs[victimIdx];
    const closes = [];
    victim.socket.onClose((e) => closes.push(e.code));
    await server.stop({ signal: "SIGKILL" });
    // Every client of the killed node (the first, and any other round robin put there) on a
    // new session and rejoined before the message below is sent.
    await waitUntil(() => cs.every((c, i) => holder(c) && holder(c) !== victimNode && channels[i].state === "joined"), {
      timeout: 15_000,
      what: "the clients of the killed node on new sessions, rejoined",
    });
    assert.ok(closes.includes(3410) || closes.includes(1011), `closed as session_gone or failed request: ${closes}`);
    const inbox = channels.map((ch) => collectEvents(ch, "receive_message"));
    const sender = (victimIdx + 1) % 3;
    assert.equal((await pushAndReceive(channels[sender], "send_message", { content: "after the kill", mobile_ref_id: "k-1" })).status, "ok");
    await waitUntil(() => inbox.filter((_, i) => i !== sender).every((got) => got.length === 1), { what: "delivery after the kill" });
    await server.start(`127.0.0.1:${server.port}`, { attempts: 5 });
  });
});
