#!/usr/bin/env bash
# Short fuzz run of every target in fuzz/ (see fuzz/README.md), on the stable toolchain:
# cargo-fuzz with `--sanitizer none` passes no -Z flag. Installs what it needs on a fresh
# machine (g++ for libFuzzer's C++, cargo-fuzz), builds the targets with debug assertions and
# overflow checks, runs each for FUZZ_SECONDS (default 60) from its seed corpus into a scratch
# corpus (the committed seeds are left as they are), and fails on the first crash, with the
# input that caused it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
targets=(json_ingest msgpack_ingest differential)

if ! command -v g++ >/dev/null 2>&1; then
  apt-get update
  apt-get install -y g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

echo "== fuzz: fmt, build"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
flags=(--sanitizer none --debug-assertions)
cargo fuzz build "${flags[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
  echo "== fuzz: $target for ${seconds}s"
  mkdir -p "$work/$target"
  args=(-max_total_time="$seconds" -timeout=10 -print_final_stats=1)
  if [ -f "fuzz/dict/$target.dict" ]; then
    args+=(-dict="fuzz/dict/$target.dict")
  fi
  if ! cargo fuzz run "${flags[@]}" "$target" "$work/$target" "fuzz/corpus/$target" -- "${args[@]}" \
    >"$work/$target.log" 2>&1; then
    grep -av '^#[0-9]*.*\(NEW\|REDUCE\|pulse\) ' "$work/$target.log" | tail -80
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -a -E '^#[0-9]+.*DONE|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
    "$work/$target.log"
done
