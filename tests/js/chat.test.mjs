// The chat service through phoenix.js, as the seed documentation uses it: JWT connect,
// chat:{id} with send_message / message_sent / receive_message, notifications:{user} with
// new_notification and pending notifications, and the error paths.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { signJwt } from "./lib/auth.mjs";
import { api } from "./lib/cluster.mjs";
import { collectEvents, delay, join, joinOk, pushAndReceive, uniq, waitForEvent, waitUntil, withTimeout } from "./lib/client.mjs";

const API_KEY = "js-chat-api-key";

describe("chat service (single node)", () => {
  const h = usePlume({ args: ["--api-key", API_KEY] });

  const as = (user, extra = {}) =>
    h.connect({ params: { token: signJwt(user), device_unique_id: `${user}-device`, preferred_language: "EN", ...extra } });
  const addMember = async (chat, user) => {
    const { status } = await api(h.server.port, "PUT", `/api/chats/${chat}/members/${user}`, API_KEY);
    assert.equal(status, 200);
  };
  const joinChat = async (client, chat) => {
    const ch = client.socket.channel(`chat:${chat}`, {});
    await joinOk(ch);
    return ch;
  };

  h.test("a connect without a valid JWT is refused and never opens", async () => {
    const c = h.client({ auth: false, params: { token: "not-a-jwt" } });
    let errors = 0;
    let opened = false;
    c.socket.onError(() => {
      errors += 1;
    });
    c.socket.onOpen(() => {
      opened = true;
    });
    c.socket.connect();
    await waitUntil(() => errors >= 2, { what: "phoenix.js to report failed connects (and retry)" });
    assert.equal(opened, false);
  });

  h.test("the JWT may come through the authToken option instead of the token param", async () => {
    const user = uniq("tok");
    const c = await h.connect({ auth: false, params: {}, authToken: signJwt(user) });
    await joinOk(c.socket.channel(`notifications:${user}`, {}));
  });

  h.test("chat join is for members only (strict); others get unauthorized", async () => {
    const chat = uniq("c");
    const alice = await as("alice");
    const refused = await join(alice.socket.channel(`chat:${chat}`, {}));
    assert.deepEqual(refused, { status: "error", response: { reason: "unauthorized" } });
    await addMember(chat, "alice");
    const other = await as("alice");
    await joinChat(other, chat);
  });

  h.test("send_message: reply and message_sent to the sender, receive_message to every other socket", async () => {
    const chat = uniq("c");
    await addMember(chat, "alice");
    await addMember(chat, "bob");
    const phone = await as("alice");
    const laptop = await as("alice");
    const bob = await as("bob");
    const ch = await joinChat(phone, chat);
    const atLaptop = collectEvents(await joinChat(laptop, chat), "receive_message");
    const atBob = collectEvents(await joinChat(bob, chat), "receive_message");
    const atPhone = collectEvents(ch, "receive_message");
    const sent = waitForEvent(ch, "message_sent");
    const reply = await pushAndReceive(ch, "send_message", { content: "Hey, how are you?", mobile_ref_id: "123123" });
    assert.equal(reply.status, "ok");
    const id = reply.response.message_id;
    assert.equal(typeof id, "string");
    const ack = (await sent).payload;
    assert.deepEqual(Object.keys(ack).sort(), ["chat_id", "message_id", "mobile_ref_id", "seq", "status", "timestamp"]);
    assert.deepEqual([ack.status, ack.mobile_ref_id, ack.chat_id, ack.message_id, ack.seq], ["sent", "123123", chat, id, 1]);
    assert.equal(reply.response.seq, 1);
    await waitUntil(() => atBob.length === 1 && atLaptop.length === 1, { what: "receive_message on bob and alice's laptop" });
    assert.deepEqual(atBob[0].payload, {
      chat_id: chat,
      content: "Hey, how are you?",
      sender_id: "alice",
      message_id: id,
      timestamp: ack.timestamp,
      seq: 1,
    });
    assert.deepEqual(atLaptop[0].payload, atBob[0].payload);
    await delay(200);
    assert.equal(atPhone.length, 0, "the sending socket does not receive its own message");
  });

  h.test("invalid sends get an error reply and message_sent with status error", async () => {
    const chat = uniq("c");
    await addMember(chat, "alice");
    const ch = await joinChat(await as("alice"), chat);
    const cases = [
      [{ content: "", mobile_ref_id: "e1" }, "invalid_content", "e1"],
      [{ content: "x".repeat(4097), mobile_ref_id: "e2" }, "content_too_long", "e2"],
      [{ content: "hi" }, "invalid_mobile_ref_id", ""],
    ];
    for (const [payload, reason, ref] of cases) {
      const sent = waitForEvent(ch, "message_sent");
      const reply = await pushAndReceive(ch, "send_message", payload);
      assert.deepEqual(reply, { status: "error", response: { reason } });
      assert.deepEqual((await sent).payload, { mobile_ref_id: ref, status: "error", chat_id: chat, reason });
    }
  });

  h.test("a retried send returns the original message_id and is delivered once", async () => {
    const chat = uniq("c");
    await addMember(chat, "alice");
    await addMember(chat, "bob");
    const ch = await joinChat(await as("alice"), chat);
    const atBob = collectEvents(await joinChat(await as("bob"), chat), "receive_message");
    const first = await pushAndReceive(ch, "send_message", { content: "once", mobile_ref_id: "same" });
    const again = await pushAndReceive(ch, "send_message", { content: "once", mobile_ref_id: "same" });
    assert.deepEqual(again, first);
    await delay(300);
    assert.equal(atBob.length, 1);
  });

  h.test("notifications: own topic only, both spellings, live and pending delivery", async () => {
    const chat = uniq("c");
    const carol = uniq("carol");
    const dave = uniq("dave");
    for (const u of ["alice", carol, dave]) await addMember(chat, u);
    const alice = await as("alice");
    const refused = await join(alice.socket.channel(`notifications:${carol}`, {}));
    assert.deepEqual(refused, { status: "error", response: { reason: "unauthorized" } });
    const ch = await joinChat(alice, chat);

    const c = await as(carol);
    const notes = c.socket.channel(`notification:${carol}`, {}); // the seed document's spelling
    await joinOk(notes);
    await delay(100);
    const live = waitForEvent(notes, "new_notification");
    const r1 = await pushAndReceive(ch, "send_message", { content: "first", mobile_ref_id: "n1" });
    const n = (await live).payload;
    assert.deepEqual(n, {
      chat_id: chat,
      sender_id: "alice",
      content: "first",
      timestamp: n.timestamp,
      message_id: r1.response.message_id,
      seq: 1,
    });

    // dave is offline for two messages, then connects.
    await pushAndReceive(ch, "send_message", { content: "second", mobile_ref_id: "n2" });
    const d = await as(dave);
    const dn = d.socket.channel(`notifications:${dave}`, {});
    const one = collectEvents(dn, "pending_notification");
    const all = waitForEvent(dn, "pending_notifications");
    await joinOk(dn);
    const bundle = (await all).payload.notifications;
    assert.deepEqual(bundle.map((x) => x.content), ["first", "second"]);
    assert.deepEqual(one.map((x) => x.payload), bundle, "each pending_notification, oldest first, before the bundle");
    // Delivered pending notifications are gone.
    const again = await as(dave);
    const dn2 = again.socket.channel(`notifications:${dave}`, {});
    const none = collectEvents(dn2, "pending_notifications");
    await joinOk(dn2);
    await delay(300);
    assert.equal(none.length, 0);
  });
  h.test("removing a member closes their chat channel with phx_close, and phoenix.js does not rejoin", async () => {
    const chat = uniq("c");
    await addMember(chat, "alice");
    await addMember(chat, "bob");
    const alice = await as("alice");
    const bob = await h.connect({
      rejoinAfterMs: () => 50,
      params: { token: signJwt("bob"), device_unique_id: "bob-device", preferred_language: "EN" },
    });
    const ach = await joinChat(alice, chat);
    const bch = await joinChat(bob, chat);
    const jr = bch.joinRef();
    const closed = new Promise((resolve) => bch.onClose(resolve));
    const atBob = collectEvents(bch, "receive_message");
    const { status } = await api(h.server.port, "DELETE", `/api/chats/${chat}/members/bob`, API_KEY);
    assert.equal(status, 200);
    await withTimeout(closed, 3_000, "bob's channel onClose after the removal");
    assert.equal(bch.state, "closed");
    assert.ok(!bob.socket.channels.includes(bch), "phoenix.js removed the channel");
    const topic = `chat:${chat}`;
    const close = bob.rec.entries.find((e) => e.dir === "in" && e.frame?.[2] === topic && e.frame?.[3] === "phx_close");
    assert.deepEqual(close.frame, [jr, jr, topic, "phx_close", {}]);
    assert.equal((await pushAndReceive(ach, "send_message", { content: "after", mobile_ref_id: "a1" })).status, "ok");
    await delay(300);
    const rejoins = bob.rec.entries.filter((e) => e.seq > close.seq && e.dir === "out" && e.frame?.[2] === topic);
    assert.equal(rejoins.length, 0, "no rejoin after phx_close");
    assert.equal(atBob.length, 0);
    assert.equal(bob.socket.connectionState(), "open");
  });

  h.test("a burst of sends over the rate limit: the excess gets rate_limited, reply and message_sent", async () => {
    const chat = uniq("c");
    await addMember(chat, "alice");
    const alice = await as("alice");
    const ch = await joinChat(alice, chat);
    const refusedSent = collectEvents(ch, "message_sent");
    const replies = await Promise.all(
      Array.from({ length: 260 }, (_, i) => pushAndReceive(ch, "send_message", { content: `m${i}`, mobile_ref_id: `r${i}` })),
    );
    const limited = replies.filter((r) => r.status === "error" && r.response.reason === "rate_limited");
    const ok = replies.filter((r) => r.status === "ok");
    assert.ok(ok.length >= 200, `the burst of 200 passes, got ${ok.length}`);
    assert.ok(limited.length > 0 && limited.length + ok.length === 260, `${limited.length} limited, ${ok.length} ok`);
    const errors = refusedSent.filter((m) => m.payload.status === "error" && m.payload.reason === "rate_limited");
    assert.equal(errors.length, limited.length, "each refusal also has its message_sent");
    assert.equal(alice.socket.connectionState(), "open", "a burst alone does not close the socket");
  });
});
