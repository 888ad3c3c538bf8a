// Missed-message recovery through the unchanged phoenix.js client: the app gives the chat
// channel its join params as a function, which phoenix.js evaluates again on every rejoin,
// so a rejoin carries the last seq the app saw and the log's epoch. The server replays what
// the app missed, in order and once, then live messages follow with no gap.

import assert from "node:assert/strict";
import { describe } from "node:test";
import { usePlume } from "./lib/harness.mjs";
import { signJwt } from "./lib/auth.mjs";
import { delay, joinOk, pushAndReceive, uniq, waitForSocketClose, waitUntil } from "./lib/client.mjs";

/** What a chat app keeps per chat: the newest seq seen and the log's epoch. */
function trackedChat(socket, topic) {
  const state = { lastSeq: 0, epoch: null, seen: [], replies: [] };
  const channel = socket.channel(topic, () =>
    state.epoch === null ? {} : { last_seq: state.lastSeq, epoch: state.epoch },
  );
  channel.on("receive_message", (m) => {
    state.seen.push(m.seq);
    state.lastSeq = Math.max(state.lastSeq, m.seq);
  });
  state.channel = channel;
  state.joined = new Promise((resolve, reject) => {
    channel
      .join()
      .receive("ok", (reply) => {
        state.replies.push(reply);
        state.epoch = reply.epoch;
        // Not recovered (or not asked): start from the head and page history if needed.
        if (reply.recovered !== true) state.lastSeq = Math.max(state.lastSeq, reply.last_seq);
        resolve(reply);
      })
      .receive("error", reject);
  });
  return state;
}

async function sendN(channel, tag, n) {
  for (let i = 0; i < n; i += 1) {
    const reply = await pushAndReceive(channel, "send_message", { content: `${tag}${i}`, mobile_ref_id: `${tag}${i}` });
    assert.equal(reply.status, "ok", JSON.stringify(reply));
  }
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe("missed-message recovery (single node)", () => {
  const h = usePlume({ args: ["--membership", "open"] });
  const as = (user, opts = {}) => h.connect({ params: { token: signJwt(user) }, ...opts });

  h.test("a client whose TCP connection drops rejoins with last_seq and gets the 20 it missed, then live ones", async () => {
    const topic = `chat:${uniq("r")}`;
    const alice = await as("alice");
    const sender = alice.socket.channel(topic, {});
    await joinOk(sender);
    // Bob reconnects after 300 ms, so the 20 messages below are sent while he is away.
    const bob = await as("bob", { reconnectAfterMs: () => 300 });
    const chat = trackedChat(bob.socket, topic);
    const first = await chat.joined;
    assert.equal(first.last_seq, 0);
    assert.equal(typeof first.epoch, "string");
    await sendN(sender, "live", 3);
    await waitUntil(() => chat.seen.length === 3, { what: "the first three live" });

    const closed = waitForSocketClose(bob.socket);
    bob.socket.conn.terminate(); // the TCP connection drops, no close frame
    await closed;
    await sendN(sender, "away", 20);
    await waitUntil(() => chat.replies.length === 2, { timeout: 5000, what: "phoenix.js to rejoin" });
    assert.equal(chat.replies[1].recovered, true, JSON.stringify(chat.replies[1]));
    assert.equal(chat.replies[1].epoch, first.epoch);
    await waitUntil(() => chat.seen.length === 23, { what: "the 20 missed messages" });
    await sendN(sender, "after", 5);
    await waitUntil(() => chat.seen.length === 28, { what: "live messages after the recovery" });
    await delay(200);
    assert.deepEqual(chat.seen, range(1, 28), "each message once, in order");
  });

  h.test("a rejoin with an epoch the server does not know is answered recovered: false and replays nothing", async () => {
    const topic = `chat:${uniq("e")}`;
    const alice = await as("alice");
    const sender = alice.socket.channel(topic, {});
    await joinOk(sender);
    await sendN(sender, "m", 4);
    const bob = await as("bob");
    const got = [];
    const ch = bob.socket.channel(topic, { last_seq: 1, epoch: "ffffffffffffffff" });
    ch.on("receive_message", (m) => got.push(m.seq));
    const reply = await joinOk(ch);
    assert.deepEqual([reply.recovered, reply.last_seq], [false, 4]);
    // The app pages history instead.
    const page = await pushAndReceive(ch, "history", { limit: 10 });
    assert.deepEqual(page.response.messages.map((m) => m.seq), [1, 2, 3, 4]);
    await delay(200);
    assert.deepEqual(got, []);
  });
});
