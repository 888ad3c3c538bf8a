// The web chat Plume serves at GET /. An ordinary client of the public contract
// (protocol-spec/chat.md) through the npm phoenix client: notifications:{user} for the rooms
// list and notifications, chat:{id} for one open chat. Bundled by web/build.sh.

import { LongPoll, Presence, Socket } from "phoenix";

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 50;
const TYPING_REPEAT_MS = 2000;
const TYPING_SHOWN_MS = 7000;
const TOKEN_KEY = "plume:token";
const SHOWN_KEY = "plume:shown-notifications";

// ---------------------------------------------------------------------------------------
// Sign-in: a token from the URL fragment (#token=JWT), kept for this tab, or in development
// mode one signed by the server for a chosen user name (POST /dev/token).

function userOfToken(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(decodeURIComponent(escape(atob(part))));
    return typeof claims.sub === "string" && claims.sub !== "" ? claims.sub : null;
  } catch {
    return null;
  }
}

// The fragment: `token=JWT` (taken out of the address bar at once, kept for this tab only)
// and `chat=ID`, the open chat (so a reload opens it again).
function fragment() {
  return new URLSearchParams(location.hash.slice(1));
}

function setFragment(params) {
  const text = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (text ? `#${text}` : ""));
}

function tokenFromFragment() {
  const params = fragment();
  const token = params.get("token");
  if (!token) return null;
  params.delete("token");
  setFragment(params);
  return token;
}

function randomId(prefix) {
  if (globalThis.crypto && crypto.randomUUID) return `${prefix}-${crypto.randomUUID()}`;
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function deviceId() {
  let id = localStorage.getItem("plume:device");
  if (!id) {
    id = randomId("web");
    localStorage.setItem("plume:device", id);
  }
  return id;
}

async function pageConfig() {
  try {
    const resp = await fetch("/config.json");
    if (resp.ok) return await resp.json();
  } catch {
    // the server is down: sign-in says so when tried
  }
  return { development_mode: true, websocket: true, long_poll_fallback_ms: null };
}

async function start() {
  state.config = await pageConfig();
  const token = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
  const user = token && userOfToken(token);
  if (token && user) {
    sessionStorage.setItem(TOKEN_KEY, token);
    run(token, user);
    return;
  }
  $("signin").hidden = false;
  if (!state.config.development_mode) {
    $("signin-intro").textContent =
      "This server is not in development mode: open this page with #token=JWT at the end of " +
      "its address, a token your backend signs (see the README).";
    $("signin-fields").hidden = true;
    return;
  }
  $("signin-name").focus();
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const error = $("signin-error");
    error.hidden = true;
    const name = $("signin-name").value.trim();
    try {
      const resp = await fetch("/dev/token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ user_id: name }),
      });
      if (resp.status === 404) {
        throw new Error(
          "This server is not in development mode: open this page with #token=JWT " +
            "(a token your backend signs, see the README).",
        );
      }
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error || `sign-in failed (${resp.status})`);
      sessionStorage.setItem(TOKEN_KEY, body.token);
      $("signin").hidden = true;
      run(body.token, body.user_id);
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  });
}

// ---------------------------------------------------------------------------------------
// The connection and its banner.

const state = {
  socket: null,
  user: null,
  connection: "connecting", // connecting | connected | reconnecting | offline
  everConnected: false,
  rooms: new Map(), // chat_id -> room
  roomsNext: null,
  chat: null, // the open chat, see openChat
};

function setConnection(next) {
  if (!navigator.onLine) next = "offline";
  state.connection = next;
  const banner = $("banner");
  banner.dataset.state = next;
  banner.textContent = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    offline: "Offline",
  }[next];
  updateComposer();
}

function run(token, user) {
  state.user = user;
  $("whoami").hidden = false;
  $("whoami-name").textContent = `Signed in as ${user}`;
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  $("app").hidden = false;
  setConnection("connecting");

  const options = { params: () => ({ token, device_unique_id: deviceId() }) };
  // WebSocket first; LongPoll once a WebSocket has not opened within this time, when the
  // server serves LongPoll (/config.json says).
  if (state.config.websocket === false) options.transport = LongPoll;
  else if (state.config.long_poll_fallback_ms) options.longPollFallbackMs = state.config.long_poll_fallback_ms;
  const socket = new Socket("/socket", options);
  state.socket = socket;
  socket.onOpen(() => {
    state.everConnected = true;
    setConnection("connected");
  });
  const lost = () => setConnection(state.everConnected ? "reconnecting" : "connecting");
  socket.onError(lost);
  socket.onClose(lost);
  window.addEventListener("offline", () => setConnection("offline"));
  window.addEventListener("online", () =>
    setConnection(socket.isConnected() ? "connected" : "reconnecting"),
  );
  socket.connect();

  joinNotifications(socket, user);
  wireRoomsScreen();
  wireChatScreen();
  document.addEventListener("visibilitychange", () => scheduleMarkRead());
  const open = fragment().get("chat");
  if (open) openChat(open);
}

// ---------------------------------------------------------------------------------------
// notifications:{user}: the rooms list, its updates, and notifications as toasts.

function joinNotifications(socket, user) {
  const channel = socket.channel(`notifications:${user}`, {});
  channel.on("room_updated", (room) => {
    if (room.member === false) state.rooms.delete(room.chat_id);
    else state.rooms.set(room.chat_id, room);
    renderRooms();
  });
  channel.on("new_notification", (n) => noteMessage(n, { notify: true }));
  // Sent once per join with every stored notification; each also came alone as
  // pending_notification, which is not shown again.
  channel.on("pending_notifications", ({ notifications }) => {
    for (const n of notifications) {
      if (n.chat_id !== undefined && n.seq !== undefined) noteMessage(n, { notify: false });
      // A message of the open chat is on screen already (recovered on rejoin).
      if (!(state.chat && state.chat.id === n.chat_id)) toast(n);
    }
  });
  channel.join().receive("ok", (reply) => {
    // A fresh list on every (re)join: the server's view wins.
    state.rooms = new Map(reply.rooms.map((r) => [r.chat_id, r]));
    state.roomsNext = reply.next;
    if (state.chat && !state.rooms.has(state.chat.id)) state.rooms.set(state.chat.id, blankRoom(state.chat.id));
    renderRooms();
  });
  state.notifications = channel;
}

// The first page of the rooms list again (a chat just created or joined shows up with its
// counts); the server's view of each room on it wins.
function refreshRooms() {
  if (!state.notifications) return;
  state.notifications.push("list_rooms", {}).receive("ok", (reply) => {
    for (const r of reply.rooms) state.rooms.set(r.chat_id, r);
    renderRooms();
  });
}

function blankRoom(chatId) {
  return { chat_id: chatId, last_message: null, unread_count: 0, members_count: null, online_count: null, member: true };
}

// A message of some chat arrived (live in the open chat, or as a notification).
function noteMessage(m, { notify }) {
  const room = state.rooms.get(m.chat_id) || blankRoom(m.chat_id);
  const last = room.last_message;
  if (!last || last.seq === undefined || m.seq === undefined || m.seq > last.seq) {
    room.last_message = {
      message_id: m.message_id, seq: m.seq, sender_id: m.sender_id, content: m.content, timestamp: m.timestamp,
    };
  }
  const open = state.chat && state.chat.id === m.chat_id;
  if (!open && m.sender_id !== state.user && (!last || m.seq === undefined || m.seq > (last.seq ?? 0))) {
    room.unread_count = (room.unread_count || 0) + 1;
  }
  state.rooms.set(m.chat_id, room);
  renderRooms();
  if (notify && !open) toast(m);
}

function shownNotifications() {
  try {
    return new Set(JSON.parse(sessionStorage.getItem(SHOWN_KEY) || "[]"));
  } catch {
    return new Set();
  }
}

// Shows a notification once (by message_id) for this tab.
function toast(n) {
  const shown = shownNotifications();
  if (n.message_id) {
    if (shown.has(n.message_id)) return;
    shown.add(n.message_id);
    sessionStorage.setItem(SHOWN_KEY, JSON.stringify([...shown].slice(-500)));
  }
  const box = document.createElement("div");
  box.className = "toast";
  box.setAttribute("role", "status");
  const text = document.createElement("p");
  text.textContent = `${n.sender_id ?? "someone"} in ${n.chat_id ?? "a chat"}: ${n.content ?? ""}`;
  const close = document.createElement("button");
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => box.remove());
  box.append(text, close);
  $("toasts").append(box);
  setTimeout(() => box.remove(), 8000);
}

function wireRoomsScreen() {
  $("open-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("open-chat").value.trim();
    if (id) openChat(id);
    $("open-chat").value = "";
  });
  $("rooms-more").addEventListener("click", () => {
    if (!state.roomsNext) return;
    state.notifications.push("list_rooms", { before: state.roomsNext }).receive("ok", (reply) => {
      for (const r of reply.rooms) if (!state.rooms.has(r.chat_id)) state.rooms.set(r.chat_id, r);
      state.roomsNext = reply.next;
      renderRooms();
    });
  });
}

function activity(room) {
  return room.last_message?.timestamp || "";
}

function renderRooms() {
  const list = $("room-list");
  const rooms = [...state.rooms.values()].sort(
    (a, b) => activity(b).localeCompare(activity(a)) || a.chat_id.localeCompare(b.chat_id),
  );
  list.replaceChildren(
    ...rooms.map((room) => {
      const li = document.createElement("li");
      li.dataset.chatId = room.chat_id;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "room";
      if (state.chat && state.chat.id === room.chat_id) button.setAttribute("aria-current", "true");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = room.chat_id;
      const last = document.createElement("span");
      last.className = "last";
      last.textContent = room.last_message
        ? `${room.last_message.sender_id}: ${room.last_message.content}`
        : "No messages yet";
      const meta = document.createElement("span");
      meta.className = "meta";
      if (room.unread_count > 0) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(room.unread_count);
        badge.setAttribute("aria-label", `${room.unread_count} unread`);
        meta.append(badge);
      }
      if (room.online_count !== null && room.online_count !== undefined) {
        const online = document.createElement("span");
        online.className = "online";
        online.textContent = `${room.online_count} online`;
        meta.append(online);
      }
      button.append(name, last, meta);
      button.addEventListener("click", () => openChat(room.chat_id));
      li.append(button);
      return li;
    }),
  );
  $("rooms-empty").hidden = rooms.length > 0;
  $("rooms-more").hidden = !state.roomsNext;
}

// ---------------------------------------------------------------------------------------
// chat:{id}: one open chat.

function wireChatScreen() {
  $("back").addEventListener("click", () => closeChat());
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("message-input");
    const content = input.value;
    if (!state.chat || content.trim() === "") return;
    input.value = "";
    sendTyping("stop");
    send(content, randomId("m"));
  });
  $("message-input").addEventListener("input", () => {
    if ($("message-input").value.trim() === "") sendTyping("stop");
    else sendTyping("typing");
  });
  $("messages-box").addEventListener("scroll", () => {
    const box = $("messages-box");
    if (box.scrollTop < 40) loadOlder();
    scheduleMarkRead();
  });
}

function updateComposer() {
  const chat = state.chat;
  $("send").disabled = !(chat && chat.joined && state.connection === "connected");
}

function closeChat() {
  const chat = state.chat;
  if (!chat) return;
  sendTyping("stop");
  // What was on screen was read: a mark still waiting for its timer goes out before the leave.
  clearTimeout(chat.markTimer);
  markRead(chat);
  chat.channel.leave();
  state.chat = null;
  const params = fragment();
  params.delete("chat");
  setFragment(params);
  document.body.classList.remove("in-chat");
  $("chat").hidden = true;
  renderRooms();
}

function openChat(id) {
  if (state.chat && state.chat.id === id) return;
  closeChat();
  const chat = {
    id,
    joined: false,
    epoch: null,
    lastSeq: 0,
    messages: new Map(), // seq -> message
    pending: new Map(), // mobile_ref_id -> {content, status, reason}
    readers: new Map(), // user_id -> seq
    typists: new Map(), // user_id -> timer
    hasMore: false,
    loadingOlder: false,
    markedRead: 0,
    typingSent: { status: "stop", at: 0 },
    markTimer: null,
  };
  state.chat = chat;
  const params = fragment();
  params.set("chat", id);
  setFragment(params);
  if (!state.rooms.has(id)) state.rooms.set(id, blankRoom(id));
  document.body.classList.add("in-chat");
  $("chat").hidden = false;
  $("chat-title").textContent = id;
  $("messages").replaceChildren();
  $("typing").textContent = "";
  $("history-status").textContent = "Loading…";
  renderRooms();

  // Params as a function: phoenix.js calls it again on every rejoin, so a rejoin after a
  // reconnect asks for what was missed since the newest seq shown.
  const channel = state.socket.channel(`chat:${id}`, () =>
    chat.epoch ? { last_seq: chat.lastSeq, epoch: chat.epoch } : { history: HISTORY_PAGE },
  );
  chat.channel = channel;
  chat.presence = new Presence(channel);
  chat.presence.onSync(() => renderPresence(chat));
  renderPresence(chat);

  channel.on("receive_message", (m) => {
    if (state.chat !== chat) return;
    addMessages(chat, [m]);
    noteMessage(m, { notify: false });
    scheduleMarkRead();
  });
  channel.on("message_sent", (ack) => onMessageSent(chat, ack));
  channel.on("user_typing", (t) => onTyping(chat, t));
  channel.on("message_read", (r) => {
    if (r.user_id === state.user) return;
    chat.readers.set(r.user_id, Math.max(chat.readers.get(r.user_id) || 0, r.seq));
    renderMessages(chat);
  });
  channel.onError(() => {
    chat.joined = false;
    updateComposer();
  });

  channel
    .join()
    .receive("ok", (reply) => {
      if (state.chat !== chat) return;
      const first = chat.epoch === null;
      const sameLog = chat.epoch === reply.epoch;
      chat.epoch = reply.epoch;
      chat.joined = true;
      updateComposer();
      if (first) {
        if (state.rooms.get(id)?.members_count == null) refreshRooms();
        const page = reply.messages || [];
        chat.hasMore = page.length === HISTORY_PAGE;
        addMessages(chat, page);
        chat.lastSeq = Math.max(chat.lastSeq, reply.last_seq);
        $("history-status").textContent = chat.hasMore ? "" : "Start of the chat";
        scrollToBottom();
        scheduleMarkRead();
      } else if (reply.recovered !== true) {
        // Nothing replayed (another epoch, or too much missed): show the latest page again.
        if (!sameLog) chat.messages.clear();
        chat.lastSeq = Math.max(sameLog ? chat.lastSeq : 0, reply.last_seq);
        reloadLatest(chat);
      }
      // recovered: the missed messages follow as receive_message.
    })
    .receive("error", (reply) => {
      $("history-status").textContent = `Could not open this chat: ${reply.reason}`;
    });
}

function reloadLatest(chat) {
  chat.channel.push("history", { limit: HISTORY_PAGE }).receive("ok", (reply) => {
    if (state.chat !== chat) return;
    addMessages(chat, reply.messages);
    chat.hasMore = reply.has_more;
    scrollToBottom();
    scheduleMarkRead();
  });
}

function loadOlder() {
  const chat = state.chat;
  if (!chat || !chat.hasMore || chat.loadingOlder || chat.messages.size === 0) return;
  chat.loadingOlder = true;
  const oldest = Math.min(...chat.messages.keys());
  $("history-status").textContent = "Loading older messages…";
  chat.channel
    .push("history", { before_seq: oldest, limit: HISTORY_PAGE })
    .receive("ok", (reply) => {
      if (state.chat !== chat) return;
      const box = $("messages-box");
      const fromBottom = box.scrollHeight - box.scrollTop;
      chat.hasMore = reply.has_more;
      addMessages(chat, reply.messages);
      // Keep what the reader was looking at in place.
      box.scrollTop = box.scrollHeight - fromBottom;
      $("history-status").textContent = chat.hasMore ? "" : "Start of the chat";
      chat.loadingOlder = false;
    })
    .receive("error", () => (chat.loadingOlder = false))
    .receive("timeout", () => (chat.loadingOlder = false));
}

function addMessages(chat, messages) {
  for (const m of messages) {
    chat.messages.set(m.seq, m);
    chat.lastSeq = Math.max(chat.lastSeq, m.seq);
  }
  const box = $("messages-box");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  renderMessages(chat);
  if (atBottom) scrollToBottom();
}

function scrollToBottom() {
  const box = $("messages-box");
  box.scrollTop = box.scrollHeight;
}

function send(content, ref) {
  const chat = state.chat;
  chat.pending.set(ref, { content, status: "pending", reason: null });
  renderMessages(chat);
  scrollToBottom();
  chat.channel
    .push("send_message", { content, mobile_ref_id: ref })
    .receive("timeout", () => markFailed(chat, ref, "no answer"));
}

function markFailed(chat, ref, reason) {
  const p = chat.pending.get(ref);
  if (!p) return;
  p.status = "failed";
  p.reason = reason;
  renderMessages(chat);
}

function onMessageSent(chat, ack) {
  const p = chat.pending.get(ack.mobile_ref_id);
  if (ack.status === "sent") {
    chat.pending.delete(ack.mobile_ref_id);
    const m = {
      chat_id: ack.chat_id,
      content: p ? p.content : "",
      sender_id: state.user,
      message_id: ack.message_id,
      timestamp: ack.timestamp,
      seq: ack.seq,
    };
    if (!chat.messages.has(m.seq) || !p) addMessages(chat, p ? [m] : []);
    else renderMessages(chat);
    if (p) noteMessage(m, { notify: false });
  } else {
    markFailed(chat, ack.mobile_ref_id, ack.reason || "error");
  }
}

function retry(ref) {
  const chat = state.chat;
  const p = chat && chat.pending.get(ref);
  if (!p) return;
  // The same mobile_ref_id: the server answers a send it already stored with the original.
  p.status = "pending";
  p.reason = null;
  renderMessages(chat);
  chat.channel
    .push("send_message", { content: p.content, mobile_ref_id: ref })
    .receive("timeout", () => markFailed(chat, ref, "no answer"));
}

function timeOf(ts) {
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function renderMessages(chat) {
  const seqs = [...chat.messages.keys()].sort((a, b) => a - b);
  // Each reader's receipt goes under the newest shown message they have read.
  const receipts = new Map();
  for (const [user, seq] of chat.readers) {
    let at = null;
    for (const s of seqs) if (s <= seq) at = s;
    if (at !== null) receipts.set(at, [...(receipts.get(at) || []), user]);
  }
  const items = seqs.map((seq) => {
    const m = chat.messages.get(seq);
    const li = messageItem(m.sender_id, m.content);
    li.dataset.seq = String(seq);
    li.dataset.messageId = m.message_id;
    const time = document.createElement("time");
    time.dateTime = m.timestamp;
    time.textContent = timeOf(m.timestamp);
    li.append(time);
    const readers = receipts.get(seq);
    if (readers) {
      const r = document.createElement("span");
      r.className = "receipts";
      r.textContent = `Read by ${readers.sort().join(", ")}`;
      li.append(r);
    }
    return li;
  });
  for (const [ref, p] of chat.pending) {
    const li = messageItem(state.user, p.content);
    li.classList.add(p.status);
    li.dataset.ref = ref;
    const st = document.createElement("span");
    st.className = "state";
    st.textContent = p.status === "failed" ? `Not sent (${p.reason})` : "Sending…";
    li.append(st);
    if (p.status === "failed") {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "retry";
      b.textContent = "Retry";
      b.addEventListener("click", () => retry(ref));
      li.append(b);
    }
    items.push(li);
  }
  $("messages").replaceChildren(...items);
}

function messageItem(sender, content) {
  const li = document.createElement("li");
  li.className = "msg";
  if (sender === state.user) li.classList.add("mine");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = sender === state.user ? "you" : sender;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = content;
  li.append(who, text);
  return li;
}

// Typing: sent when the input changes, repeated at most every 2 s while typing goes on (the
// server also throttles, and sends a stop after 6 s of silence).
function sendTyping(status) {
  const chat = state.chat;
  if (!chat || !chat.joined || state.connection !== "connected") return;
  const now = Date.now();
  const last = chat.typingSent;
  if (status === last.status && (status === "stop" || now - last.at < TYPING_REPEAT_MS)) return;
  chat.typingSent = { status, at: now };
  chat.channel.push("typing", { status });
}

function onTyping(chat, t) {
  if (t.user_id === state.user) return;
  clearTimeout(chat.typists.get(t.user_id));
  if (t.status === "stop") chat.typists.delete(t.user_id);
  else {
    chat.typists.set(
      t.user_id,
      setTimeout(() => {
        chat.typists.delete(t.user_id);
        renderTyping(chat);
      }, TYPING_SHOWN_MS),
    );
  }
  renderTyping(chat);
}

function renderTyping(chat) {
  if (state.chat !== chat) return;
  const names = [...chat.typists.keys()].sort();
  $("typing").textContent =
    names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
}

function renderPresence(chat) {
  if (state.chat !== chat) return;
  const users = chat.presence.list((id, { metas }) => ({ id, devices: metas.length }));
  $("presence-count").textContent = String(users.length);
  $("presence").replaceChildren(
    ...users.map(({ id, devices }) => {
      const li = document.createElement("li");
      li.textContent = devices > 1 ? `${id} (${devices} devices)` : id;
      return li;
    }),
  );
}

// Read receipts: mark_read up to the newest message on screen, while the page is visible.
function scheduleMarkRead() {
  const chat = state.chat;
  if (!chat) return;
  clearTimeout(chat.markTimer);
  chat.markTimer = setTimeout(() => markRead(chat), 300);
}

function markRead(chat) {
  if (state.chat !== chat || !chat.joined || document.visibilityState !== "visible") return;
  const box = $("messages-box").getBoundingClientRect();
  let seen = 0;
  for (const li of $("messages").querySelectorAll("li[data-seq]")) {
    const r = li.getBoundingClientRect();
    if (r.top < box.bottom && r.bottom > box.top) seen = Math.max(seen, Number(li.dataset.seq));
  }
  if (seen <= chat.markedRead) return;
  chat.markedRead = seen;
  chat.channel.push("mark_read", { seq: seen }).receive("ok", ({ unread }) => {
    const room = state.rooms.get(chat.id);
    if (room) {
      room.unread_count = unread;
      renderRooms();
    }
  });
}

start();
