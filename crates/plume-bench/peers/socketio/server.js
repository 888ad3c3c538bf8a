// The Socket.IO peer of Plume's chat service, for side-by-side benchmarks.
//
// It implements the same room behaviour as Plume's chat:{id} channel (protocol-spec/chat.md),
// in Socket.IO's terms, so plume-bench can run one scenario against both servers:
//
//   connect       auth {token}: an HS256 JWT verified with --jwt-secret (alg, signature,
//                 exp, non-empty sub), as Plume verifies it; refused with "unauthorized"
//   join          (topic, ack): "chat:{id}" joins that room; "notifications:{user}" only for
//                 the token's own user. ack {status: "ok"} or {status: "error", reason}
//   send_message  ({topic, content, mobile_ref_id}, ack): validated like Plume (content
//                 non-blank, at most --max-message-chars characters; mobile_ref_id a non-empty
//                 string; topic joined). Everyone else in the room gets
//                 receive_message {chat_id, content, sender_id, message_id, timestamp}; the
//                 sender's ack is {mobile_ref_id, status: "sent", chat_id, message_id,
//                 timestamp} or {mobile_ref_id, status: "error", chat_id, reason}.
//
// Plume does more per message than this peer (idempotency keys, membership records, offline
// notifications); none of that is mirrored here, which favours the peer in a comparison.
//
// Usage: node server.js --port 3000 [--host 127.0.0.1] [--jwt-secret S]
// Loopback addresses only, like the rest of the benchmark.

"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");

function parseArgs(argv) {
  const opts = {
    port: 3000,
    host: "127.0.0.1",
    jwtSecret: "plume-bench-secret",
    maxMessageChars: 4096,
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split("=", 2);
    const value = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case "--port":
        opts.port = Number(value());
        break;
      case "--host":
        opts.host = value();
        break;
      case "--jwt-secret":
        opts.jwtSecret = value();
        break;
      case "--max-message-chars":
        opts.maxMessageChars = Number(value());
        break;
      default:
        throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    throw new Error("--port must be a TCP port");
  }
  const loopback =
    opts.host === "localhost" || opts.host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(opts.host);
  if (!loopback) {
    throw new Error(`refusing to listen on non-loopback ${opts.host}`);
  }
  return opts;
}

// HS256 JWT verification with node's crypto only: the header must say HS256, the signature
// must match, exp must be in the future (30 s leeway, like Plume) and sub non-empty.
function verifyToken(token, secret) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], "base64url").toString("utf8"));
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  } catch {
    return null;
  }
  if (!header || header.alg !== "HS256") return null;
  const expected = crypto
    .createHmac("sha256", secret)
    .update(`${parts[0]}.${parts[1]}`)
    .digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return null;
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== "number" || claims.exp + 30 < now) return null;
  if (typeof claims.nbf === "number" && claims.nbf - 30 > now) return null;
  if (typeof claims.sub !== "string" || claims.sub === "") return null;
  return claims.sub;
}

function charCount(text, limit) {
  // UTF-16 length is an upper bound of the code point count: count only when it matters.
  if (text.length <= limit) return text.length;
  let n = 0;
  for (const _ of text) n++;
  return n;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const httpServer = http.createServer((req, res) => {
    if (req.url === "/healthz") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ status: "ok", connections: io.engine.clientsCount }));
      return;
    }
    res.writeHead(404);
    res.end();
  });
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
    maxHttpBufferSize: 1e6,
  });

  io.use((socket, next) => {
    const user = verifyToken(socket.handshake.auth && socket.handshake.auth.token, opts.jwtSecret);
    if (!user) return next(new Error("unauthorized"));
    socket.data.user = user;
    next();
  });

  io.on("connection", (socket) => {
    const user = socket.data.user;

    socket.on("join", (topic, ack) => {
      if (typeof ack !== "function") return;
      if (typeof topic !== "string") return ack({ status: "error", reason: "invalid_topic" });
      if (topic.startsWith("chat:")) {
        if (topic.length === "chat:".length) {
          return ack({ status: "error", reason: "invalid_topic" });
        }
      } else if (topic.startsWith("notifications:")) {
        if (topic !== `notifications:${user}`) {
          return ack({ status: "error", reason: "unauthorized" });
        }
      } else {
        return ack({ status: "error", reason: "unmatched_topic" });
      }
      socket.join(topic);
      ack({ status: "ok" });
    });

    socket.on("send_message", (msg, ack) => {
      if (typeof ack !== "function") return;
      const topic = msg && typeof msg.topic === "string" ? msg.topic : "";
      const chatId = topic.startsWith("chat:") ? topic.slice("chat:".length) : "";
      const refuse = (reason, mobileRefId) =>
        ack({ mobile_ref_id: mobileRefId, status: "error", chat_id: chatId, reason });
      if (!msg || typeof msg !== "object") return refuse("invalid_payload", "");
      if (!chatId || !socket.rooms.has(topic)) return refuse("unauthorized", "");
      const mobileRefId = msg.mobile_ref_id;
      if (typeof mobileRefId !== "string" || mobileRefId === "") {
        return refuse("invalid_mobile_ref_id", "");
      }
      const content = msg.content;
      if (typeof content !== "string" || content.trim() === "") {
        return refuse("invalid_content", mobileRefId);
      }
      if (charCount(content, opts.maxMessageChars) > opts.maxMessageChars) {
        return refuse("content_too_long", mobileRefId);
      }
      const messageId = crypto.randomUUID();
      const timestamp = new Date().toISOString();
      // Encoded once by the adapter and written to every other socket in the room.
      socket.to(topic).emit("receive_message", {
        chat_id: chatId,
        content,
        sender_id: user,
        message_id: messageId,
        timestamp,
      });
      ack({
        mobile_ref_id: mobileRefId,
        status: "sent",
        chat_id: chatId,
        message_id: messageId,
        timestamp,
      });
    });
  });

  httpServer.listen(opts.port, opts.host, () => {
    const { port } = httpServer.address();
    console.log(`socket.io peer listening on ${opts.host}:${port}`);
  });

  const stop = () => {
    io.close();
    httpServer.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

main();
