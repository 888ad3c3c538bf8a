// Phoenix Presence on chat:{id} through the real phoenix.js `Presence` helper (unchanged):
// onSync / list / onJoin / onLeave, two devices of one user, a rejoin after a reconnect,
// the backend's GET /api/chats/{id}/presence, and user_online_changed on notifications.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { Presence } from "phoenix";
import { usePlume } from "./lib/harness.mjs";
import { signJwt } from "./lib/auth.mjs";
import { api } from "./lib/cluster.mjs";
import { joinOk, uniq, waitForEvent, waitUntil } from "./lib/client.mjs";

const API_KEY = "js-presence-api-key";

/** `{user: [device ids]}` of what a Presence helper lists. */
function devices(presence) {
  const out = {};
  presence.list((user, { metas }) => {
    out[user] = metas.map((m) => m.device_unique_id);
  });
  return out;
}

describe("presence (single node)", () => {
  const h = usePlume({
    args: ["--api-key", API_KEY, "--presence-interval", "0.05", "--online-linger", "0.2"],
  });

  const as = (user, device) =>
    h.connect({ params: { token: signJwt(user), device_unique_id: device, preferred_language: "EN" } });
  const addMember = async (chat, user) => {
    const { status } = await api(h.server.port, "PUT", `/api/chats/${chat}/members/${user}`, API_KEY);
    assert.equal(status, 200);
  };
  /** Joins chat:{chat} with a Presence helper attached before the join, as apps do. */
  const joinWithPresence = async (client, chat) => {
    const channel = client.socket.channel(`chat:${chat}`, {});
    const presence = new Presence(channel);
    const events = { syncs: 0, joins: [], leaves: [] };
    presence.onSync(() => {
      events.syncs += 1;
    });
    presence.onJoin((key, current, joined) => events.joins.push({ key, current, joined }));
    presence.onLeave((key, current, left) => events.leaves.push({ key, current, left }));
    await joinOk(channel);
    return { channel, presence, events };
  };

  h.test("the helper lists one key per user and one meta per device; a closed device leaves its meta", async () => {
    const chat = uniq("p");
    for (const u of ["alice", "bob"]) await addMember(chat, u);
    const bob = await as("bob", "bob-laptop");
    const b = await joinWithPresence(bob, chat);
    await waitUntil(() => b.events.syncs >= 1, { what: "bob's first sync" });
    assert.deepEqual(devices(b.presence), { bob: ["bob-laptop"] });

    const alice1 = await as("alice", "alice-phone");
    const a1 = await joinWithPresence(alice1, chat);
    const alice2 = await as("alice", "alice-tablet");
    await joinWithPresence(alice2, chat);
    await waitUntil(() => devices(b.presence).alice?.length === 2, { what: "bob to list both of alice's devices" });
    assert.deepEqual(devices(b.presence), { alice: ["alice-phone", "alice-tablet"], bob: ["bob-laptop"] });
    await waitUntil(() => devices(a1.presence).alice?.length === 2 && devices(a1.presence).bob, {
      what: "alice's phone to list everyone",
    });
    // onJoin: a new key (no current presence) the first time; both metas joined in all
    // (in one diff or two, as the coalescing interval falls).
    const aliceJoins = b.events.joins.filter((j) => j.key === "alice");
    assert.equal(aliceJoins[0].current, undefined);
    const joinedRefs = new Set(aliceJoins.flatMap((j) => j.joined.metas.map((m) => m.phx_ref)));
    assert.equal(joinedRefs.size, 2);
    const refs = b.presence.list((_, { metas }) => metas.map((m) => m.phx_ref)).flat();
    assert.equal(new Set(refs).size, 3, "phx_ref is unique per meta");
    for (const { metas } of b.presence.list((_, p) => p)) {
      for (const m of metas) assert.ok(m.online_at > 1_700_000_000_000, `online_at in ms: ${m.online_at}`);
    }

    // The tablet's socket goes away: one key, one meta left, and onLeave says so.
    alice2.socket.disconnect();
    await waitUntil(() => devices(b.presence).alice?.length === 1, { what: "the tablet's meta to leave" });
    assert.deepEqual(devices(b.presence), { alice: ["alice-phone"], bob: ["bob-laptop"] });
    const leave = b.events.leaves.find((l) => l.key === "alice");
    assert.deepEqual(leave.left.metas.map((m) => m.device_unique_id), ["alice-tablet"]);
    assert.deepEqual(leave.current.metas.map((m) => m.device_unique_id), ["alice-phone"]);

    // The backend sees the same map.
    const { status, json: body } = await api(h.server.port, "GET", `/api/chats/${chat}/presence`, API_KEY);
    assert.equal(status, 200);
    const fromApi = {};
    for (const [user, { metas }] of Object.entries(body)) fromApi[user] = metas.map((m) => m.device_unique_id);
    assert.deepEqual(fromApi, devices(b.presence));

    // Alice's last device leaves the channel: her key is gone.
    await new Promise((resolve) => a1.channel.leave().receive("ok", resolve));
    await waitUntil(() => !devices(b.presence).alice, { what: "alice's key to go" });
    assert.deepEqual(devices(b.presence), { bob: ["bob-laptop"] });
  });

  h.test("after a reconnect the rejoined channel gets a fresh presence_state and the helper resyncs", async () => {
    const chat = uniq("p");
    for (const u of ["alice", "bob", "carol"]) await addMember(chat, u);
    const alice = await as("alice", "alice-phone");
    await joinWithPresence(alice, chat);
    const bob = await as("bob", "bob-phone");
    const b = await joinWithPresence(bob, chat);
    await waitUntil(() => Object.keys(devices(b.presence)).length === 2, { what: "bob to see alice" });
    const oldRef = b.presence.list((u, { metas }) => (u === "bob" ? metas[0].phx_ref : null)).find(Boolean);

    // Bob's connection drops (not a clean disconnect: phoenix.js reconnects and rejoins).
    const rejoined = waitForEvent(b.channel, "presence_state", { timeout: 10_000 });
    for (const ws of bob.rec.transports) ws.terminate();
    // Meanwhile alice leaves and carol arrives; bob misses both diffs.
    alice.socket.disconnect();
    const carol = await as("carol", "carol-phone");
    await joinWithPresence(carol, chat);
    const fresh = await rejoined;
    assert.ok(fresh.joinRef, "presence_state carries the rejoin's join_ref");
    await waitUntil(
      () => {
        const d = devices(b.presence);
        return !d.alice && d.carol && d.bob;
      },
      { what: "bob's helper to resync: carol in, alice out" },
    );
    assert.deepEqual(devices(b.presence), { bob: ["bob-phone"], carol: ["carol-phone"] });
    const newRef = b.presence.list((u, { metas }) => (u === "bob" ? metas[0].phx_ref : null)).find(Boolean);
    assert.notEqual(newRef, oldRef, "the rejoined socket is a new meta");
  });

  h.test("user_online_changed reaches the notifications topic of the user's chat members", async () => {
    const chat = uniq("p");
    const alice = uniq("alice");
    const bob = uniq("bob");
    for (const u of [alice, bob]) await addMember(chat, u);
    const b = await as(bob, "b");
    const notes = b.socket.channel(`notifications:${bob}`, {});
    await joinOk(notes);
    const online = waitForEvent(notes, "user_online_changed", { filter: (p) => p.user_id === alice });
    const a = await as(alice, "a");
    assert.deepEqual((await online).payload, { user_id: alice, online: true });
    const offline = waitForEvent(notes, "user_online_changed", { filter: (p) => p.user_id === alice });
    a.socket.disconnect();
    assert.deepEqual((await offline).payload, { user_id: alice, online: false });
  });
});
