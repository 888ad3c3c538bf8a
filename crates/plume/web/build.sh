#!/usr/bin/env bash
# Rebuilds dist/app.js, the web chat's script, from src/app.js and the npm phoenix client
# (versions pinned by package-lock.json), with esbuild. The result is committed so that
# `cargo build` needs no Node.js; run this after changing src/app.js or the phoenix version.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
echo "built $(pwd)/dist/app.js ($(wc -c < dist/app.js) bytes)"
