// The cluster topology of docker-compose.yml, as local processes on loopback: a private
// redis-server, N plume nodes sharing it, and nginx in front with the same WebSocket proxy
// settings. A missing redis-server or nginx is a failure that says how to install it.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { startServer } from "./server.mjs";

const children = new Set();
process.once("exit", () => {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {
      // gone
    }
  }
});

/** A free loopback TCP port. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function findBinary(name, installHint) {
  for (const dir of (process.env.PATH ?? "").split(":").concat(["/usr/sbin", "/usr/bin", "/sbin"])) {
    const candidate = path.join(dir, name);
    if (dir && existsSync(candidate)) return candidate;
  }
  throw new Error(`${name} is not installed: ${installHint}`);
}

async function waitForPort(port, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on port ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A private redis-server with persistence, restartable with its data. */
export class Redis {
  constructor() {
    this.bin = findBinary("redis-server", "apt-get install -y redis-server");
    this.dir = mkdtempSync(path.join(os.tmpdir(), "plume-js-redis-"));
    this.child = null;
  }

  async start() {
    if (!this.port) this.port = await freePort();
    const args = ["--bind", "127.0.0.1", "--port", String(this.port), "--save", "", "--appendonly", "yes",
      "--appendfsync", "always", "--dir", this.dir];
    this.child = spawn(this.bin, args, { stdio: "ignore" });
    children.add(this.child);
    await waitForPort(this.port, "redis-server");
    return this;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}/`;
  }

  async stop() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
    children.delete(child);
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  async destroy() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** nginx in front of the nodes, configured like docker-compose.yml. */
export class Nginx {
  constructor(upstreamPorts) {
    this.bin = findBinary("nginx", "apt-get install -y nginx");
    this.dir = mkdtempSync(path.join(os.tmpdir(), "plume-js-nginx-"));
    this.upstreamPorts = upstreamPorts;
    this.child = null;
  }

  async start() {
    this.port = await freePort();
    const d = this.dir;
    const servers = this.upstreamPorts
      .map((p) => `    server 127.0.0.1:${p} max_fails=1 fail_timeout=5s;`)
      .join("\n");
    const asRoot = typeof process.getuid === "function" && process.getuid() === 0;
    const conf = `${asRoot ? "user root;\n" : ""}daemon off;
worker_processes 1;
pid ${d}/nginx.pid;
error_log ${d}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${d}/body;
  proxy_temp_path ${d}/proxy;
  fastcgi_temp_path ${d}/fastcgi;
  uwsgi_temp_path ${d}/uwsgi;
  scgi_temp_path ${d}/scgi;
  upstream plume {
${servers}
  }
  map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      close;
  }
  server {
    listen 127.0.0.1:${this.port};
    location / {
      proxy_pass http://plume;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 120s;
      proxy_send_timeout 120s;
      proxy_next_upstream error timeout http_502 http_503;
    }
  }
}
`;
    writeFileSync(path.join(d, "nginx.conf"), conf);
    const check = spawnSync(this.bin, ["-t", "-p", d, "-c", path.join(d, "nginx.conf")], { encoding: "utf8" });
    if (check.status !== 0) throw new Error(`nginx rejected its config:\n${check.stderr}`);
    this.child = spawn(this.bin, ["-p", d, "-c", path.join(d, "nginx.conf")], { stdio: "ignore" });
    children.add(this.child);
    await waitForPort(this.port, "nginx");
    return this;
  }

  /** phoenix.js endpoint through the load balancer. */
  get url() {
    return `ws://127.0.0.1:${this.port}/socket`;
  }

  errorLog() {
    try {
      return readFileSync(path.join(this.dir, "error.log"), "utf8");
    } catch {
      return "";
    }
  }

  async destroy() {
    const child = this.child;
    this.child = null;
    if (child) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
      children.delete(child);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Starts redis, `n` plume nodes sharing it, and nginx in front. */
export async function startCluster({ nodes = 3, args = [] } = {}) {
  const redis = await new Redis().start();
  const servers = [];
  for (let i = 1; i <= nodes; i++) {
    servers.push(
      await startServer({
        args: ["--redis-url", redis.url, "--node-id", `node-${i}`, "--node-ttl", "3", ...args],
        env: { PLUME_ECHO_CHANNEL: "false" },
      }),
    );
  }
  const nginx = await new Nginx(servers.map((s) => s.port)).start();
  return {
    redis,
    servers,
    nginx,
    async destroy() {
      await nginx.destroy();
      for (const s of servers) {
        if (s.running) await s.stop();
      }
      await redis.destroy();
    },
  };
}

/** GET http://127.0.0.1:PORT/PATH; resolves with {status, body}. */
export async function httpGet(port, pathname, headers = {}) {
  const res = await fetch(`http://127.0.0.1:${port}${pathname}`, { headers });
  return { status: res.status, body: await res.text() };
}

/** Calls the backend API of a node. */
export async function api(port, method, pathname, key, body) {
  const res = await fetch(`http://127.0.0.1:${port}${pathname}`, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}
