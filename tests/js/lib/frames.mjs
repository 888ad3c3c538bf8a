// Pattern matching of recorded frames against expected transcript shapes.
//
// A pattern is plain JSON, except:
//   - a string starting with "$" is a variable: it binds to whatever value it
//     first meets and must be equal at every later occurrence ("$JR" for a
//     join_ref, "$R1" for a ref ...);
//   - ANY matches any value.

import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";

export const ANY = Symbol("ANY");

function isVar(p) {
  return typeof p === "string" && p.length > 1 && p.startsWith("$");
}

/**
 * Tries to match `actual` against `pattern`, extending `bindings` (a Map).
 * Returns a new Map on success, or null.
 */
export function match(pattern, actual, bindings = new Map()) {
  if (pattern === ANY) return bindings;
  if (isVar(pattern)) {
    if (bindings.has(pattern)) return isDeepStrictEqual(bindings.get(pattern), actual) ? bindings : null;
    const next = new Map(bindings);
    next.set(pattern, actual);
    return next;
  }
  if (Array.isArray(pattern)) {
    if (!Array.isArray(actual) || actual.length !== pattern.length) return null;
    let b = bindings;
    for (let i = 0; i < pattern.length; i++) {
      b = match(pattern[i], actual[i], b);
      if (!b) return null;
    }
    return b;
  }
  if (pattern !== null && typeof pattern === "object") {
    if (actual === null || typeof actual !== "object" || Array.isArray(actual)) return null;
    const pk = Object.keys(pattern).sort();
    const ak = Object.keys(actual).sort();
    if (!isDeepStrictEqual(pk, ak)) return null;
    let b = bindings;
    for (const k of pk) {
      b = match(pattern[k], actual[k], b);
      if (!b) return null;
    }
    return b;
  }
  return Object.is(pattern, actual) ? bindings : null;
}

function show(v) {
  return JSON.stringify(v, (_k, x) => (x === ANY ? "<ANY>" : x));
}

/** Asserts that a single frame matches; returns the bindings. */
export function assertFrame(actual, pattern, bindings = new Map(), message = "frame") {
  const b = match(pattern, actual, bindings);
  if (!b) {
    assert.fail(
      `${message} does not match\n  expected: ${show(pattern)}\n  actual:   ${JSON.stringify(actual)}\n` +
        `  bindings: ${JSON.stringify(Object.fromEntries(bindings))}`,
    );
  }
  return b;
}

/**
 * Checks a recorded transcript against a script.
 *
 * `frames` are recorder frame entries (text frames only are expected);
 * `script` is a list of steps, each either
 *   [dir, pattern]                     ("out" = client->server, "in" = server->client)
 *   {unordered: [[dir, pattern], ...]} (these frames, in any order)
 * The script must account for every frame, in order.
 */
export function assertTranscript(frames, script) {
  const actual = frames.map((e) => [e.dir, e.binary ? `<binary ${e.bytes.toString("hex")}>` : e.frame]);
  const render = () => actual.map(([d, f], i) => `  ${String(i).padStart(2)} ${d === "out" ? ">>" : "<<"} ${JSON.stringify(f)}`).join("\n");
  let bindings = new Map();
  let pos = 0;
  for (const [stepIndex, step] of script.entries()) {
    const group = Array.isArray(step) ? [step] : step.unordered;
    const pending = [...group];
    while (pending.length > 0) {
      if (pos >= actual.length) {
        assert.fail(
          `transcript ended early: step ${stepIndex} still expects ${pending.map(([d, p]) => `${d} ${show(p)}`).join(" | ")}\n` +
            `recorded frames:\n${render()}`,
        );
      }
      const [dir, frame] = actual[pos];
      let matched = -1;
      for (let i = 0; i < pending.length; i++) {
        const [pdir, pattern] = pending[i];
        if (pdir !== dir) continue;
        const b = match(pattern, frame, bindings);
        if (b) {
          bindings = b;
          matched = i;
          break;
        }
      }
      if (matched < 0) {
        assert.fail(
          `frame ${pos} does not match step ${stepIndex}\n  got:      ${dir === "out" ? ">>" : "<<"} ${JSON.stringify(frame)}\n` +
            `  expected: ${pending.map(([d, p]) => `${d === "out" ? ">>" : "<<"} ${show(p)}`).join("\n       or: ")}\n` +
            `  bindings: ${JSON.stringify(Object.fromEntries(bindings))}\nrecorded frames:\n${render()}`,
        );
      }
      pending.splice(matched, 1);
      pos += 1;
    }
  }
  if (pos !== actual.length) {
    assert.fail(`unexpected extra frames after the script (from index ${pos}):\nrecorded frames:\n${render()}`);
  }
  return Object.fromEntries(bindings);
}
