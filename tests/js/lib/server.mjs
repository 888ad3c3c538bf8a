// Starts and stops the `plume` server binary for the phoenix.js test suite.
//
// The binary is taken from $PLUME_BIN, or else from <repo>/target/debug/plume.
// A missing binary is a hard failure (the suite never skips): build it first
// with `cargo build -p plume`.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { TEST_JWT_SECRET } from "./auth.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Root of the Plume cargo workspace (tests/js/lib -> ../../..). */
export const REPO_ROOT = path.resolve(HERE, "..", "..", "..");

const LISTEN_ADDR_RE = /addr=(\d+\.\d+\.\d+\.\d+:\d+)/;
// Strip terminal colour sequences in case the logger ignores NO_COLOR.
const ANSI_RE = /\x1b\[[0-9;]*[A-Za-z]/g;

const DEFAULT_START_TIMEOUT_MS = 10_000;
// Above the server's default shutdown grace period (10 s).
const DEFAULT_STOP_TIMEOUT_MS = 15_000;

/**
 * Environment every server gets (tests may override it):
 * - PLUME_ECHO_CHANNEL mounts the sample `echo:*` channel, which is opt-in
 *   once the chat service is wired in (binaries without the flag ignore it);
 * - PLUME_JWT_SECRET makes the tokens from lib/auth.mjs valid.
 */
export const DEFAULT_SERVER_ENV = {
  NO_COLOR: "1",
  PLUME_ECHO_CHANNEL: "true",
  PLUME_JWT_SECRET: TEST_JWT_SECRET,
};

// Every child we spawn, so that an abnormal exit of the test process
// does not leave servers behind; and every data dir we made, removed at exit.
const liveChildren = new Set();
const dataDirs = new Set();
process.once("exit", () => {
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
});

/** Absolute path of the server binary under test. */
export function plumeBinaryPath() {
  const fromEnv = process.env.PLUME_BIN;
  if (fromEnv && fromEnv.trim() !== "") return path.resolve(fromEnv);
  return path.join(REPO_ROOT, "target", "debug", "plume");
}

/** Throws a helpful error when the binary has not been built. */
export function assertBinaryExists(bin = plumeBinaryPath()) {
  if (!existsSync(bin)) {
    throw new Error(
      `plume server binary not found at ${bin}.\n` +
        "Build it first with `cargo build -p plume` (from the repository root), " +
        "or point PLUME_BIN at an existing binary.",
    );
  }
  return bin;
}

/**
 * Starts `plume serve --bind 127.0.0.1:0 [...args]` and resolves once it has
 * logged its listening address.
 *
 * @param {object} [opts]
 * @param {string[]} [opts.args] extra command line arguments after `--bind`
 * @param {Record<string,string>} [opts.env] extra environment variables
 * @param {number} [opts.startTimeoutMs] how long to wait for the listening line
 * @returns {Promise<PlumeServer>}
 */
export async function startServer(opts = {}) {
  const server = new PlumeServer(opts);
  // Port 0 cannot clash, so an early exit is a real failure: no retries.
  await server.start("127.0.0.1:0", { attempts: 1 });
  return server;
}

export class PlumeServer {
  constructor({ args = [], env = {}, startTimeoutMs = DEFAULT_START_TIMEOUT_MS } = {}) {
    this.bin = assertBinaryExists();
    this.extraArgs = args;
    // Each server gets its own embedded store (the default), kept across restart() so
    // that a restarted server finds its data; a test may point PLUME_DATA_DIR elsewhere.
    this.dataDir = mkdtempSync(path.join(os.tmpdir(), "plume-js-"));
    dataDirs.add(this.dataDir);
    this.extraEnv = { PLUME_DATA_DIR: this.dataDir, ...env };
    this.startTimeoutMs = startTimeoutMs;
    /** @type {{t: number, gen: number, stream: string, line: string}[]} */
    this.lines = [];
    this.t0 = Date.now();
    this.generation = 0;
    this.child = null;
    this.addr = null;
    this.host = null;
    this.port = null;
    /** How the previous process ended: {code, signal, forced, ms}. */
    this.lastExit = null;
  }

  /** The phoenix.js endpoint URL (phoenix.js appends `/websocket`). */
  get url() {
    return `ws://${this.addr}/socket`;
  }

  /** URL of the raw WebSocket endpoint, with an optional query string. */
  wsUrl(query = "") {
    return `ws://${this.addr}/socket/websocket${query ? `?${query}` : ""}`;
  }

  get running() {
    return this.child !== null;
  }

  /** All captured server output, one line per entry, prefixed with time and stream. */
  output() {
    return this.lines
      .map((l) => `[+${String(l.t).padStart(6)}ms] #${l.gen} ${l.stream}: ${l.line}`)
      .join("\n");
  }

  /** The last `n` lines of captured output. */
  tail(n = 60) {
    const all = this.output().split("\n");
    return all.slice(Math.max(0, all.length - n)).join("\n");
  }

  _note(stream, line) {
    this.lines.push({ t: Date.now() - this.t0, gen: this.generation, stream, line });
  }

  /**
   * Spawns the binary bound to `bind` and waits for the listening line.
   * With `attempts` > 1, a process that dies before listening (e.g. the port
   * is still held by the previous process during a restart) is retried.
   */
  async start(bind, { attempts = 1 } = {}) {
    if (this.child) throw new Error("plume server is already running");
    let lastError;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      try {
        return await this._spawnOnce(bind);
      } catch (err) {
        lastError = err;
        if (!err.exitedEarly || attempt === attempts) break;
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
    }
    throw lastError;
  }

  _spawnOnce(bind) {
    this.generation += 1;
    const gen = this.generation;
    const args = ["serve", "--bind", bind, ...this.extraArgs];
    this._note("harness", `spawn ${this.bin} ${args.join(" ")}`);
    const child = spawn(this.bin, args, {
      cwd: REPO_ROOT,
      env: { ...process.env, ...DEFAULT_SERVER_ENV, ...this.extraEnv },
      stdio: ["ignore", "pipe", "pipe"],
    });
    liveChildren.add(child);
    this.child = child;

    return new Promise((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        finish(
          new Error(
            `plume server did not print a "listening ... addr=IP:PORT" line within ` +
              `${this.startTimeoutMs} ms.\n--- server output ---\n${this.tail(80)}`,
          ),
        );
        child.kill("SIGKILL");
      }, this.startTimeoutMs);

      const finish = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(this);
      };

      const onLine = (stream, raw) => {
        const line = raw.replace(ANSI_RE, "");
        this._note(stream, line);
        if (settled || !/listening/i.test(line)) return;
        const m = LISTEN_ADDR_RE.exec(line);
        if (!m) return;
        this.addr = m[1];
        const idx = this.addr.lastIndexOf(":");
        this.host = this.addr.slice(0, idx);
        this.port = Number(this.addr.slice(idx + 1));
        finish();
      };

      for (const [name, stream] of [
        ["stdout", child.stdout],
        ["stderr", child.stderr],
      ]) {
        let buf = "";
        stream.setEncoding("utf8");
        stream.on("data", (chunk) => {
          buf += chunk;
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            onLine(name, buf.slice(0, nl).replace(/\r$/, ""));
            buf = buf.slice(nl + 1);
          }
        });
        stream.on("end", () => {
          if (buf) onLine(name, buf);
          buf = "";
        });
      }

      child.on("error", (err) => {
        this._note("harness", `spawn error: ${err.message}`);
        liveChildren.delete(child);
        if (this.child === child) this.child = null;
        finish(new Error(`could not start ${this.bin}: ${err.message}`));
      });

      child.on("exit", (code, signal) => {
        liveChildren.delete(child);
        this._note("harness", `process #${gen} exited code=${code} signal=${signal}`);
        if (this.child === child) this.child = null;
        if (!settled) {
          const err = new Error(
            `plume server exited (code=${code}, signal=${signal}) before it was listening.\n` +
              `--- server output ---\n${this.tail(80)}`,
          );
          err.exitedEarly = true;
          finish(err);
        }
      });
    });
  }

  /**
   * Sends `signal` (SIGTERM by default) and waits for the process to exit.
   * If it does not exit within `timeoutMs` (15 s) it is killed with SIGKILL and
   * `lastExit.forced` is set.
   */
  async stop({ signal = "SIGTERM", timeoutMs = DEFAULT_STOP_TIMEOUT_MS } = {}) {
    const child = this.child;
    if (!child) return this.lastExit;
    const started = Date.now();
    const exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        resolve({ code: child.exitCode, signal: child.signalCode });
      } else {
        child.once("exit", (code, sig) => resolve({ code, signal: sig }));
      }
    });
    this._note("harness", `sending ${signal}`);
    child.kill(signal);
    let forced = false;
    let timer;
    const result = await Promise.race([
      exited,
      new Promise((resolve) => {
        timer = setTimeout(() => resolve(null), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    let info = result;
    if (!info) {
      forced = true;
      this._note("harness", `no exit ${timeoutMs} ms after ${signal}; sending SIGKILL`);
      child.kill("SIGKILL");
      info = await exited;
    }
    this.child = null;
    this.lastExit = { ...info, forced, ms: Date.now() - started };
    return this.lastExit;
  }

  /**
   * Stops the server with SIGTERM, waits for it to exit and starts it again
   * on the same port.
   */
  async restart() {
    const port = this.port;
    if (!port) throw new Error("restart() before the server ever listened");
    const exit = await this.stop({ signal: "SIGTERM" });
    await this.start(`127.0.0.1:${port}`, { attempts: 10 });
    if (this.port !== port) {
      throw new Error(`server restarted on port ${this.port}, expected ${port}`);
    }
    return exit;
  }
}
