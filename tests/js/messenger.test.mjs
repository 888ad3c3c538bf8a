// The messenger screens through phoenix.js: typing indicators (user_typing, throttled, with
// an automatic stop), read receipts (mark_read, message_read, unread counts) and the rooms
// list on notifications:{user} (the join reply's rooms, list_rooms paging, room_updated).

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { signJwt } from "./lib/auth.mjs";
import { api } from "./lib/cluster.mjs";
import { collectEvents, delay, joinOk, pushAndReceive, uniq, waitForEvent, waitUntil } from "./lib/client.mjs";

const API_KEY = "js-messenger-api-key";

describe("typing, read receipts and the rooms list", () => {
  const h = usePlume({ args: ["--api-key", API_KEY] });

  const as = (user, device = `${user}-device`) =>
    h.connect({ params: { token: signJwt(user), device_unique_id: device, preferred_language: "EN" } });
  const addMember = async (chat, user) => {
    const { status } = await api(h.server.port, "PUT", `/api/chats/${chat}/members/${user}`, API_KEY);
    assert.equal(status, 200);
  };
  const joinChat = async (client, chat) => {
    const ch = client.socket.channel(`chat:${chat}`, {});
    await joinOk(ch);
    return ch;
  };
  const send = async (ch, content) => {
    const reply = await pushAndReceive(ch, "send_message", { content, mobile_ref_id: uniq("m") });
    assert.equal(reply.status, "ok");
    return reply.response;
  };

  h.test("typing: the others get user_typing, repeats are throttled, a bad status is refused, a stop follows silence", async () => {
    const chat = uniq("c");
    const [alice, bob] = [uniq("alice"), uniq("bob")];
    for (const u of [alice, bob]) await addMember(chat, u);
    const ach = await joinChat(await as(alice), chat);
    const atBob = collectEvents(await joinChat(await as(bob), chat), "user_typing");
    const atAlice = collectEvents(ach, "user_typing");
    assert.equal((await pushAndReceive(ach, "typing", { status: "typing" })).status, "ok");
    assert.equal((await pushAndReceive(ach, "typing", { status: "typing" })).status, "ok");
    assert.equal((await pushAndReceive(ach, "typing", { status: "recording" })).status, "ok");
    await waitUntil(() => atBob.length >= 2, { what: "typing and recording at bob" });
    assert.deepEqual(atBob[0].payload, { chat_id: chat, user_id: alice, status: "typing" });
    assert.deepEqual(atBob[1].payload, { chat_id: chat, user_id: alice, status: "recording" });
    assert.deepEqual(await pushAndReceive(ach, "typing", { status: "dancing" }), {
      status: "error",
      response: { reason: "invalid_typing_status" },
    });
    // Six seconds without a new typing event: a stop on alice's behalf.
    await waitUntil(() => atBob.length >= 3, { timeout: 9_000, what: "the automatic stop" });
    assert.deepEqual(atBob[2].payload, { chat_id: chat, user_id: alice, status: "stop" });
    assert.equal(atBob.length, 3, "the repeated typing was not forwarded");
    assert.equal(atAlice.length, 0, "the typist does not get their own typing");
  });

  h.test("typing: leaving the chat sends a stop for the typist", async () => {
    const chat = uniq("c");
    const [alice, bob] = [uniq("alice"), uniq("bob")];
    for (const u of [alice, bob]) await addMember(chat, u);
    const ach = await joinChat(await as(alice), chat);
    const atBob = collectEvents(await joinChat(await as(bob), chat), "user_typing");
    await pushAndReceive(ach, "typing", { status: "typing" });
    await waitUntil(() => atBob.length === 1, { what: "typing at bob" });
    ach.leave();
    await waitUntil(() => atBob.length === 2, { what: "the stop after leave" });
    assert.equal(atBob[1].payload.status, "stop");
  });

  h.test("mark_read: the reply has the unread count, the others get message_read, a bad seq is refused", async () => {
    const chat = uniq("c");
    const [alice, bob] = [uniq("alice"), uniq("bob")];
    for (const u of [alice, bob]) await addMember(chat, u);
    const ach = await joinChat(await as(alice), chat);
    const bch = await joinChat(await as(bob), chat);
    for (const t of ["one", "two", "three"]) await send(ach, t);
    await send(bch, "mine");
    const read = waitForEvent(ach, "message_read");
    assert.deepEqual(await pushAndReceive(bch, "mark_read", { seq: 1 }), { status: "ok", response: { unread: 2 } });
    assert.deepEqual((await read).payload, { chat_id: chat, user_id: bob, seq: 1 });
    assert.deepEqual(await pushAndReceive(bch, "mark_read", { seq: 0 }), { status: "error", response: { reason: "invalid_seq" } });
    assert.deepEqual(await pushAndReceive(bch, "mark_read", { seq: 5 }), { status: "error", response: { reason: "invalid_seq" } });
    // Never back.
    assert.deepEqual(await pushAndReceive(bch, "mark_read", { seq: 4 }), { status: "ok", response: { unread: 0 } });
    assert.deepEqual(await pushAndReceive(bch, "mark_read", { seq: 2 }), { status: "ok", response: { unread: 0 } });
  });

  h.test("rooms: the notifications join reply lists the rooms, list_rooms pages them, room_updated follows a read elsewhere", async () => {
    const [alice, bob] = [uniq("alice"), uniq("bob")];
    const chats = [uniq("ra"), uniq("rb"), uniq("rc")];
    for (const c of chats) for (const u of [alice, bob]) await addMember(c, u);
    const a = await as(alice);
    const chans = {};
    for (const c of chats) chans[c] = await joinChat(a, c);
    // Activity order: rb, then rc, then ra (newest first).
    for (const c of [chats[0], chats[2], chats[1]]) {
      await delay(5);
      await send(chans[c], `hello ${c}`);
    }
    const phone = await as(bob, "phone");
    const notes = phone.socket.channel(`notifications:${bob}`, {});
    const updates = collectEvents(notes, "room_updated");
    const reply = await joinOk(notes);
    assert.deepEqual(reply.rooms.map((r) => r.chat_id), [chats[1], chats[2], chats[0]]);
    assert.equal(reply.next, null);
    const top = reply.rooms[0];
    assert.deepEqual(Object.keys(top).sort(), ["chat_id", "last_message", "member", "members_count", "online_count", "unread_count"]);
    assert.equal(top.last_message.content, `hello ${chats[1]}`);
    assert.equal(top.last_message.sender_id, alice);
    assert.equal(top.last_message.seq, 1);
    assert.equal(top.unread_count, 1);
    assert.equal(top.members_count, 2);
    assert.equal(top.online_count, 2);

    const first = await pushAndReceive(notes, "list_rooms", { limit: 2 });
    assert.equal(first.status, "ok");
    assert.deepEqual(first.response.rooms.map((r) => r.chat_id), [chats[1], chats[2]]);
    const rest = await pushAndReceive(notes, "list_rooms", { before: first.response.next });
    assert.deepEqual(rest.response.rooms.map((r) => r.chat_id), [chats[0]]);
    assert.equal(rest.response.next, null);
    assert.deepEqual(await pushAndReceive(notes, "list_rooms", { before: "forged" }), {
      status: "error",
      response: { reason: "invalid_cursor" },
    });

    // Bob reads rb on his laptop: his phone's rooms list gets the new unread count.
    const laptop = await as(bob, "laptop");
    const lch = await joinChat(laptop, chats[1]);
    await pushAndReceive(lch, "mark_read", { seq: 1 });
    await waitUntil(() => updates.length >= 1, { what: "room_updated on the phone" });
    assert.equal(updates[0].payload.chat_id, chats[1]);
    assert.equal(updates[0].payload.unread_count, 0);

    const { status, json: body } = await api(h.server.port, "GET", `/api/users/${bob}/rooms?limit=1`, API_KEY);
    assert.equal(status, 200);
    assert.deepEqual(body.rooms.map((r) => r.chat_id), [chats[1]]);
    assert.equal(typeof body.next, "string");
  });
});
