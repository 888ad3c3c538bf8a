#!/usr/bin/env bash
# Runs every fuzz target in turn, one libFuzzer process at a time, and prints one line of
# figures per target (executions, exec/s, coverage, corpus, time).
#
#   fuzz/run-all.sh 60                  each target for 60 seconds
#   fuzz/run-all.sh --runs 10000000     each target for 10 million executions
#   fuzz/run-all.sh 60 v2_text jwt      only the targets named
#
# New inputs go to fuzz/corpus/<target>/ (git-ignored); the committed seeds in
# fuzz/seeds/<target>/ are read, never written. libFuzzer's log of each run is kept in
# fuzz/logs/<target>.log. A crash stops the script with libFuzzer's exit code and leaves the
# input in fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run <target> <file>).
set -euo pipefail
cd "$(dirname "$0")"

usage() { echo "usage: $0 SECONDS [TARGET...] | $0 --runs N [TARGET...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
if [ "$1" = "--runs" ]; then
  [ $# -ge 2 ] || usage
  limit=(-runs="$2"); shift 2
else
  limit=(-max_total_time="$1"); shift
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)

mkdir -p logs
printf '%-14s %12s %9s %6s %7s %12s %7s\n' target executions exec/s cov ft corpus seconds
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  start=$(date +%s)
  # -jobs=1 -workers=1: one worker process (libFuzzer then writes its log to fuzz-0.log).
  if ! cargo +nightly fuzz run --release "$t" "corpus/$t" "seeds/$t" -- \
      "${limit[@]}" -jobs=1 -workers=1 -print_final_stats=1 >"logs/$t.out" 2>&1; then
    cat fuzz-0.log >"logs/$t.log" 2>/dev/null || true
    echo "$t: FAILED, see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
    tail -n 30 "logs/$t.log" >&2
    exit 1
  fi
  mv fuzz-0.log "logs/$t.log"
  secs=$(( $(date +%s) - start ))
  # The last status line: "#N DONE cov: C ft: F corp: K/SIZE ... exec/s: E rss: R".
  last=$(grep -E '^#[0-9]+' "logs/$t.log" | tail -n 1)
  runs=$(grep -oE 'stat::number_of_executed_units:[[:space:]]+[0-9]+' "logs/$t.log" | grep -oE '[0-9]+$')
  rate=$(grep -oE 'stat::average_exec_per_sec:[[:space:]]+[0-9]+' "logs/$t.log" | grep -oE '[0-9]+$')
  cov=$(sed -E 's/.* cov: ([0-9]+).*/\1/' <<<"$last")
  ft=$(sed -E 's/.* ft: ([0-9]+).*/\1/' <<<"$last")
  corp=$(sed -E 's/.* corp: ([^ ]+).*/\1/' <<<"$last")
  printf '%-14s %12s %9s %6s %7s %12s %7s\n' "$t" "$runs" "$rate" "$cov" "$ft" "$corp" "$secs"
done
