// The web chat `plume serve` shows at GET /, in a real browser: headless Chromium (Debian's
// package) driven by puppeteer-core, against the real binary in development mode. Two browser
// contexts are two users: sign-in, a chat opened by both, messages both ways, typing, the
// unread badge in the rooms list rising and clearing, read receipts, history after a reload,
// and a server killed and restarted on the same port and data dir (banner reconnecting ->
// connected, the missed messages shown). Screenshots go to tests/js/screenshots/ (gitignored).

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { launchBrowser } from "./lib/browser.mjs";
import { createClient, delay, joinOk, pushAndReceive, waitForOpen } from "./lib/client.mjs";
import { PlumeServer } from "./lib/server.mjs";

const SHOTS = path.join(path.dirname(fileURLToPath(import.meta.url)), "screenshots");
const DESKTOP = { width: 1280, height: 800 };
// Width only: puppeteer reloads a page whose isMobile or hasTouch changes.
const PHONE = { width: 390, height: 760 };
const WAIT_MS = 10_000;
const CHAT = "general";

describe("the web chat in headless Chromium", { timeout: 120_000 }, () => {
  /** @type {PlumeServer} */
  let server;
  let chromium;
  const pages = {};
  const logs = [];
  const requests = [];
  const extraClients = [];

  const origin = () => `http://${server.addr}`;

  before(async () => {
    mkdirSync(SHOTS, { recursive: true });
    // Development mode: loopback, no JWT secret (the suite's default secret is taken away).
    server = new PlumeServer({ env: { PLUME_JWT_SECRET: undefined, PLUME_ECHO_CHANNEL: undefined } });
    await server.start("127.0.0.1:0");
    chromium = await launchBrowser();
    for (const [name, viewport] of [
      ["alice", DESKTOP],
      ["bob", PHONE],
    ]) {
      const context = await chromium.browser.createBrowserContext();
      const page = await context.newPage();
      await page.setViewport(viewport);
      page.on("console", (msg) => logs.push(`${name} console.${msg.type()}: ${msg.text()}`));
      page.on("pageerror", (err) => logs.push(`${name} page error: ${err.message}`));
      page.on("request", (req) => requests.push(req.url()));
      pages[name] = page;
    }
  });

  after(async () => {
    for (const c of extraClients) c.socket.disconnect();
    if (chromium) await chromium.close();
    if (server) await server.stop();
  });

  // A failing step says what the pages logged and what the server did.
  const step = (name, fn) =>
    it(name, async () => {
      try {
        await fn();
      } catch (err) {
        err.message +=
          `\n--- browser log ---\n${logs.slice(-40).join("\n") || "(none)"}` +
          `\n--- plume server output (tail) ---\n${server ? server.tail(60) : "(not started)"}`;
        throw err;
      }
    });

  const waitFor = (page, what, fn, ...args) =>
    page.waitForFunction(fn, { timeout: WAIT_MS, polling: 50 }, ...args).catch((err) => {
      throw new Error(`waiting for ${what}: ${err.message}`);
    });
  const banner = (page, state) =>
    waitFor(page, `the banner to say ${state}`, (s) => document.getElementById("banner").dataset.state === s, state);
  const texts = (page) =>
    page.$$eval("#messages li.msg[data-seq] .text", (els) => els.map((e) => e.textContent));
  const showsMessage = (page, text) =>
    waitFor(
      page,
      `message ${JSON.stringify(text)}`,
      (t) => [...document.querySelectorAll("#messages li.msg[data-seq] .text")].some((e) => e.textContent === t),
      text,
    );
  const badge = (page, chat) =>
    page.$eval(`#room-list li[data-chat-id="${chat}"]`, (li) => li.querySelector(".unread")?.textContent ?? null);
  const send = async (page, text) => {
    await page.type("#message-input", text);
    await page.click("#send");
  };
  const shot = (page, file) => page.screenshot({ path: path.join(SHOTS, file) });

  step("serves the page, which signs each user in with a development token", async () => {
    for (const name of ["alice", "bob"]) {
      const page = pages[name];
      const resp = await page.goto(`${origin()}/`);
      assert.equal(resp.status(), 200);
      await banner(page, "signed-out");
      await page.type("#signin-name", name);
      await page.click("#signin-form button[type=submit]");
      await banner(page, "connected");
      assert.equal(await page.$eval("#whoami-name", (e) => e.textContent), `Signed in as ${name}`);
    }
  });

  step("both open the same chat; messages go both ways, the sender's pending until sent", async () => {
    for (const name of ["alice", "bob"]) {
      const page = pages[name];
      await page.type("#open-chat", CHAT);
      await page.keyboard.press("Enter");
      await waitFor(page, "the chat to open", () => !document.getElementById("send").disabled);
      assert.equal(await page.$eval("#chat-title", (e) => e.textContent), CHAT);
    }
    await send(pages.alice, "hello bob");
    // Alice's own message leaves the pending state once message_sent says sent (it has a seq).
    await showsMessage(pages.alice, "hello bob");
    await showsMessage(pages.bob, "hello bob");
    await send(pages.bob, "hi alice, how are you?");
    await showsMessage(pages.alice, "hi alice, how are you?");
    await showsMessage(pages.bob, "hi alice, how are you?");
    for (const name of ["alice", "bob"]) {
      assert.deepEqual(await texts(pages[name]), ["hello bob", "hi alice, how are you?"]);
      assert.equal(await pages[name].$$eval("#messages li.pending, #messages li.failed", (l) => l.length), 0);
    }
    const mine = await pages.alice.$$eval("#messages li.mine .text", (l) => l.map((e) => e.textContent));
    assert.deepEqual(mine, ["hello bob"]);
  });

  step("typing shows at the other user and clears when the message is sent", async () => {
    await pages.alice.type("#message-input", "I am fine");
    await waitFor(pages.bob, "the typing indicator", () =>
      document.getElementById("typing").textContent.includes("alice is typing"),
    );
    await pages.alice.click("#send");
    await showsMessage(pages.bob, "I am fine");
    await waitFor(pages.bob, "the typing indicator to clear", () => document.getElementById("typing").textContent === "");
  });

  step("the presence list shows who is in the chat, and drops who leaves it", async () => {
    const listed = (page) => page.$$eval("#presence li", (l) => l.map((e) => e.textContent).sort());
    for (const name of ["alice", "bob"]) {
      await waitFor(pages[name], "both users in the presence list", () => document.getElementById("presence-count").textContent === "2");
      assert.deepEqual(await listed(pages[name]), ["alice", "bob"]);
    }
    // Bob goes back to his rooms list (leaving chat:): alice's list follows the presence_diff.
    await pages.bob.click("#back");
    await waitFor(pages.alice, "bob to leave the presence list", () => document.getElementById("presence-count").textContent === "1");
    assert.deepEqual(await listed(pages.alice), ["alice"]);
    await pages.bob.click(`#room-list li[data-chat-id="${CHAT}"] button`);
    await waitFor(pages.alice, "bob back in the presence list", () => document.getElementById("presence-count").textContent === "2");
  });

  step("the unread badge rises in bob's rooms list and clears when he opens the chat", async () => {
    await pages.bob.click("#back");
    await waitFor(pages.bob, "the rooms list", () => document.getElementById("chat").hidden);
    assert.equal(await badge(pages.bob, CHAT), null, "bob has read everything so far");
    await send(pages.alice, "are you there?");
    await waitFor(pages.bob, "badge 1", (c) => document.querySelector(`#room-list li[data-chat-id="${c}"] .unread`)?.textContent === "1", CHAT);
    await send(pages.alice, "bob?");
    await waitFor(pages.bob, "badge 2", (c) => document.querySelector(`#room-list li[data-chat-id="${c}"] .unread`)?.textContent === "2", CHAT);
    const last = await pages.bob.$eval(`#room-list li[data-chat-id="${CHAT}"] .last`, (e) => e.textContent);
    assert.equal(last, "alice: bob?");
    // Both members are connected (the rooms list came from list_rooms when bob joined).
    await waitFor(pages.bob, "the online count", (c) => document.querySelector(`#room-list li[data-chat-id="${c}"] .online`)?.textContent === "2 online", CHAT);
    await shot(pages.bob, "rooms-phone.png");
    await pages.bob.setViewport(DESKTOP);
    await shot(pages.bob, "rooms-desktop.png");
    await pages.bob.setViewport(PHONE);
    await pages.bob.click(`#room-list li[data-chat-id="${CHAT}"] button`);
    await showsMessage(pages.bob, "bob?");
    await waitFor(pages.bob, "the badge to clear", (c) => !document.querySelector(`#room-list li[data-chat-id="${c}"] .unread`), CHAT);
    // Bob's mark_read reached alice as message_read: a receipt under her last message.
    await waitFor(pages.alice, "bob's read receipt", () =>
      [...document.querySelectorAll("#messages li[data-seq]")].at(-1)?.querySelector(".receipts")?.textContent === "Read by bob",
    );
    await shot(pages.bob, "chat-phone.png");
    await shot(pages.alice, "chat-desktop.png");
  });

  step("a reload shows the chat's history again", async () => {
    const before = await texts(pages.bob);
    assert.equal(before.length, 5);
    await pages.bob.reload();
    await banner(pages.bob, "connected");
    await showsMessage(pages.bob, "bob?");
    assert.deepEqual(await texts(pages.bob), before);
    assert.equal(await badge(pages.bob, CHAT), null);
  });

  step("a killed and restarted server: reconnecting, then connected, and the missed messages", async () => {
    const port = server.port;
    await server.stop({ signal: "SIGKILL" });
    await banner(pages.alice, "reconnecting");
    await banner(pages.bob, "reconnecting");
    assert.equal(await pages.alice.$eval("#send", (b) => b.disabled), true, "send is disabled while disconnected");
    await server.start(`127.0.0.1:${port}`, { attempts: 10 });
    // Carol writes as soon as the server is back, from Node, likely before the browsers'
    // backoff reconnects them: they get it by recovery on rejoin (or live, if they were back).
    const resp = await fetch(`${origin()}/dev/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: "carol" }),
    });
    assert.equal(resp.status, 200);
    const { token } = await resp.json();
    const carol = createClient(server.url, { label: "carol", params: { token } });
    extraClients.push(carol);
    carol.socket.connect();
    await waitForOpen(carol.socket);
    const channel = carol.socket.channel(`chat:${CHAT}`, {});
    await joinOk(channel);
    for (const content of ["while you were away", "two things happened"]) {
      const reply = await pushAndReceive(channel, "send_message", { content, mobile_ref_id: `carol-${content}` });
      assert.equal(reply.status, "ok");
    }
    for (const name of ["alice", "bob"]) {
      await banner(pages[name], "connected");
      await showsMessage(pages[name], "two things happened");
      const all = await texts(pages[name]);
      assert.deepEqual(all.slice(-2), ["while you were away", "two things happened"], name);
      assert.equal(all.length, 7, `${name}: no message lost or doubled: ${JSON.stringify(all)}`);
    }
    await waitFor(pages.alice, "send enabled again", () => !document.getElementById("send").disabled);
    await send(pages.alice, "back online");
    await showsMessage(pages.alice, "back online").catch(async (err) => {
      const items = await pages.alice.$$eval("#messages li", (l) => l.map((e) => e.outerHTML));
      items.push(await pages.alice.evaluate(() => JSON.stringify({ v: document.getElementById("message-input").value, d: document.getElementById("send").disabled, b: document.getElementById("banner").dataset.state, f: document.activeElement?.id })));
      throw new Error(`${err.message}\nalice's messages:\n${items.join("\n")}`);
    });
    await showsMessage(pages.bob, "back online");
  });

  step("the page asked nothing of any other host", async () => {
    assert.ok(requests.length > 0);
    const elsewhere = requests.filter((url) => !url.startsWith(`${origin()}/`));
    assert.deepEqual(elsewhere, []);
    assert.deepEqual(
      logs.filter((l) => l.includes("page error") || l.includes("Content Security Policy")),
      [],
    );
  });
});

describe("the web chat: a refused send is marked failed and its retry reuses the mobile_ref_id", { timeout: 60_000 }, () => {
  let server;
  let chromium;
  const logs = [];

  before(async () => {
    // A server that refuses content over 10 characters, restarted later without that limit.
    server = new PlumeServer({
      args: ["--max-message-chars", "10"],
      env: { PLUME_JWT_SECRET: undefined, PLUME_ECHO_CHANNEL: undefined },
    });
    await server.start("127.0.0.1:0");
    chromium = await launchBrowser();
  });

  after(async () => {
    if (chromium) await chromium.close();
    if (server) await server.stop();
  });

  it("shows the failure, then sends the same message again with the same id", async () => {
    const page = await chromium.browser.newPage();
    page.on("pageerror", (err) => logs.push(`page error: ${err.message}`));
    // The frames the page sends, read from the browser's own network log.
    const sent = [];
    // The restart may move the page to LongPoll (phoenix.js's fallback): its POSTs carry
    // frames too, one JSON array a line.
    page.on("request", (req) => {
      if (req.method() !== "POST" || !req.url().includes("/socket/longpoll")) return;
      for (const line of (req.postData() || "").split("\n")) {
        try {
          sent.push(JSON.parse(line));
        } catch {
          // not a frame
        }
      }
    });
    const cdp = await page.createCDPSession();
    await cdp.send("Network.enable");
    cdp.on("Network.webSocketFrameSent", ({ response }) => {
      try {
        sent.push(JSON.parse(response.payloadData));
      } catch {
        // not JSON
      }
    });
    const wait = (what, fn, ...args) =>
      page.waitForFunction(fn, { timeout: WAIT_MS, polling: 50 }, ...args).catch((err) => {
        throw new Error(`waiting for ${what}: ${err.message}\n${logs.join("\n")}\n${server.tail(30)}`);
      });
    await page.goto(`http://${server.addr}/#chat=retries`);
    await page.type("#signin-name", "dana");
    await page.click("#signin-form button[type=submit]");
    await wait("the chat to open", () => !document.getElementById("send").disabled);
    await page.type("#message-input", "this one is too long");
    await page.click("#send");
    await wait("the failed mark", () => document.querySelector("#messages li.failed .retry") !== null);
    const state = await page.$eval("#messages li.failed .state", (e) => e.textContent);
    assert.equal(state, "Not sent (content_too_long)");
    const sends = () => sent.filter((f) => f[3] === "send_message").map((f) => f[4]);
    assert.equal(sends().length, 1);

    // The operator raises the limit; the page reconnects by itself and the retry succeeds.
    const port = server.port;
    await server.stop();
    server.extraArgs = [];
    await server.start(`127.0.0.1:${port}`, { attempts: 10 });
    await wait("connected again", () => document.getElementById("banner").dataset.state === "connected");
    await wait("the chat rejoined", () => !document.getElementById("send").disabled);
    await page.click("#messages li.failed .retry");
    await wait("the message sent", () =>
      [...document.querySelectorAll("#messages li[data-seq] .text")].some((e) => e.textContent === "this one is too long"),
    );
    assert.equal(await page.$$eval("#messages li.failed, #messages li.pending", (l) => l.length), 0);
    const [first, retry] = sends();
    assert.equal(sends().length, 2);
    assert.deepEqual(retry, first, "the retry is the same content with the same mobile_ref_id");
    assert.deepEqual(logs, []);
  });
});

describe("the web chat over LongPoll when the server serves no WebSocket", { timeout: 60_000 }, () => {
  let server;
  let chromium;

  before(async () => {
    server = new PlumeServer({
      args: ["--websocket", "false"],
      env: { PLUME_JWT_SECRET: undefined, PLUME_ECHO_CHANNEL: undefined },
    });
    await server.start("127.0.0.1:0");
    chromium = await launchBrowser();
  });

  after(async () => {
    if (chromium) await chromium.close();
    if (server) await server.stop();
  });

  it("signs in, opens a chat and sends through /socket/longpoll", async () => {
    const page = await chromium.browser.newPage();
    const requests = [];
    const errors = [];
    page.on("request", (req) => requests.push(new URL(req.url()).pathname));
    page.on("pageerror", (err) => errors.push(err.message));
    const wait = (what, fn) =>
      page.waitForFunction(fn, { timeout: WAIT_MS, polling: 50 }).catch((err) => {
        throw new Error(`waiting for ${what}: ${err.message}\n${errors.join("\n")}\n${server.tail(30)}`);
      });
    await page.goto(`http://${server.addr}/#chat=polled`);
    await page.type("#signin-name", "erin");
    await page.click("#signin-form button[type=submit]");
    await wait("connected", () => document.getElementById("banner").dataset.state === "connected");
    await wait("the chat to open", () => !document.getElementById("send").disabled);
    await page.type("#message-input", "over long polling");
    await page.click("#send");
    await wait("the message sent", () =>
      [...document.querySelectorAll("#messages li[data-seq] .text")].some((e) => e.textContent === "over long polling"),
    );
    assert.ok(requests.includes("/socket/longpoll"), JSON.stringify(requests));
    assert.deepEqual(errors, []);
  });
});

describe("the web chat: older pages on scrolling up, pending notifications as toasts once, offline", { timeout: 60_000 }, () => {
  let server;
  let chromium;
  let carol;

  before(async () => {
    server = new PlumeServer({ env: { PLUME_JWT_SECRET: undefined, PLUME_ECHO_CHANNEL: undefined } });
    await server.start("127.0.0.1:0");
    chromium = await launchBrowser();
    const resp = await fetch(`http://${server.addr}/dev/token`, {
      method: "POST",
      body: JSON.stringify({ user_id: "carol" }),
    });
    const { token } = await resp.json();
    carol = createClient(server.url, { label: "carol", params: { token } });
    carol.socket.connect();
    await waitForOpen(carol.socket);
  });

  after(async () => {
    if (carol) carol.socket.disconnect();
    if (chromium) await chromium.close();
    if (server) await server.stop();
  });

  const carolSays = async (chat, contents) => {
    const channel = carol.socket.channel(`chat:${chat}`, {});
    await joinOk(channel);
    for (const content of contents) {
      const reply = await pushAndReceive(channel, "send_message", { content, mobile_ref_id: `carol-${chat}-${content}` });
      assert.equal(reply.status, "ok");
    }
    channel.leave();
  };
  const signedInPage = async (context, user, fragment = "") => {
    const page = await context.newPage();
    await page.setViewport(DESKTOP);
    await page.goto(`http://${server.addr}/${fragment}`);
    await page.type("#signin-name", user);
    await page.click("#signin-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("banner").dataset.state === "connected", { timeout: WAIT_MS });
    return page;
  };
  const count = (page) => page.$$eval("#messages li[data-seq]", (l) => l.length);

  it("shows the newest 50 messages, and the older ones when scrolled to the top", async () => {
    await carolSays("long", Array.from({ length: 60 }, (_, i) => `m${i + 1}`));
    const context = await chromium.browser.createBrowserContext();
    const page = await signedInPage(context, "frank", "#chat=long");
    await page.waitForFunction(() => document.querySelectorAll("#messages li[data-seq]").length === 50, { timeout: WAIT_MS });
    assert.equal(await page.$eval("#messages li[data-seq] .text", (e) => e.textContent), "m11");
    await page.$eval("#messages-box", (box) => {
      box.scrollTop = 0;
    });
    await page.waitForFunction(() => document.querySelectorAll("#messages li[data-seq]").length === 60, { timeout: WAIT_MS });
    assert.equal(await page.$eval("#messages li[data-seq] .text", (e) => e.textContent), "m1");
    assert.equal(await page.$eval("#history-status", (e) => e.textContent), "Start of the chat");
    assert.equal(await count(page), 60);
    await context.close();
  });

  it("shows notifications that waited while the user was away, once", async () => {
    const context = await chromium.browser.createBrowserContext();
    // Grace joins "news" (open membership makes her a member), then closes the page.
    const first = await signedInPage(context, "grace", "#chat=news");
    await first.waitForFunction(() => !document.getElementById("send").disabled, { timeout: WAIT_MS });
    await first.close();
    await carolSays("news", ["the news while you were out"]);
    const page = await signedInPage(context, "grace");
    const toasts = () => page.$$eval("#toasts .toast p", (l) => l.map((e) => e.textContent));
    await page.waitForFunction(() => document.querySelectorAll("#toasts .toast").length > 0, { timeout: WAIT_MS });
    assert.deepEqual(await toasts(), ["carol in news: the news while you were out"]);
    await page.waitForFunction(
      () => document.querySelector('#room-list li[data-chat-id="news"] .unread')?.textContent === "1",
      { timeout: WAIT_MS },
    );
    // Shown once: a reload does not show it again.
    await page.reload();
    await page.waitForFunction(() => document.getElementById("banner").dataset.state === "connected", { timeout: WAIT_MS });
    await page.waitForFunction(() => document.querySelector('#room-list li[data-chat-id="news"]'), { timeout: WAIT_MS });
    // Pending notifications follow the join reply at once; give them time to show, if any.
    await delay(500);
    assert.deepEqual(await toasts(), []);
    await context.close();
  });

  it("says offline and disables sending while the browser is offline", async () => {
    const context = await chromium.browser.createBrowserContext();
    const page = await signedInPage(context, "heidi", "#chat=offline-test");
    await page.waitForFunction(() => !document.getElementById("send").disabled, { timeout: WAIT_MS });
    await page.setOfflineMode(true);
    await page.waitForFunction(() => document.getElementById("banner").dataset.state === "offline", { timeout: WAIT_MS });
    assert.equal(await page.$eval("#send", (b) => b.disabled), true);
    await page.setOfflineMode(false);
    await page.waitForFunction(() => document.getElementById("banner").dataset.state === "connected", { timeout: WAIT_MS });
    await page.waitForFunction(() => !document.getElementById("send").disabled, { timeout: WAIT_MS });
    await context.close();
  });
});
