#!/usr/bin/env bash
# Runs schemathesis (from PyPI, pinned) against a live `kora-telemetry serve` with
# schema/openapi.json: every documented operation, positive and negative data, JSON and
# MessagePack bodies, with all checks but positive_data_acceptance (see .ci/schemathesis.toml).
# Any failure fails the script. Run it locally as it is: `.ci/schemathesis.sh`.
#
# Environment:
#   KORA_ST_MAX_EXAMPLES  examples per operation and phase (default 100)
#   KORA_ST_SEED          the random seed (default: a fresh one, printed by schemathesis)
#   KORA_ST_VENV          where the virtual environment lives (default: in the cargo target dir)
#   KORA_ST_REPORT_DIR    where the JUnit report and the failing cases (for `st replay`) go
#                         (default: a temporary directory, removed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MSGPACK_VERSION=1.2.4
target_dir=${CARGO_TARGET_DIR:-target}
venv=${KORA_ST_VENV:-$target_dir/schemathesis-venv}
max_examples=${KORA_ST_MAX_EXAMPLES:-100}

echo "== schemathesis $SCHEMATHESIS_VERSION in $venv"
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "schemathesis $SCHEMATHESIS_VERSION needs Python 3.11 or later; python3 is $(python3 --version)" >&2
  exit 1
fi
if [ "$("$venv/bin/python" -c 'import schemathesis; print(schemathesis.__version__)' 2>/dev/null)" \
    != "$SCHEMATHESIS_VERSION" ]; then
  if ! python3 -m venv "$venv"; then
    # Debian's python3 keeps venv (ensurepip) in a separate package.
    apt-get update && apt-get install -y python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "msgpack==$MSGPACK_VERSION"
fi

echo "== build the service"
cargo build --quiet --bin kora-telemetry
bin=$target_dir/debug/kora-telemetry

work=$(mktemp -d)
report_dir=${KORA_ST_REPORT_DIR:-$work/report}
mkdir -p "$work/data" "$work/exports" "$report_dir"
server=""
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    wait "$server" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Port 0: the service picks a free port and prints its address on the first line.
KORA_TELEMETRY_LOG=${KORA_TELEMETRY_LOG:-warn} \
  "$bin" --data-dir "$work/data" serve --listen 127.0.0.1:0 >"$work/stdout" 2>"$work/stderr" &
server=$!
base=""
for _ in $(seq 1 100); do
  base=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/stdout" | head -n 1 || true)
  [ -n "$base" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$work/stderr" >&2
    echo "kora-telemetry serve exited before listening" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$base" ] || { echo "kora-telemetry serve printed no address" >&2; exit 1; }
token=$(cat "$work/data/token")
echo "== seed the service"
suggestion=$("$venv/bin/python" .ci/schemathesis_seed.py "$base")
echo "== schemathesis against $base (max $max_examples examples per operation)"

seed_args=()
[ -n "${KORA_ST_SEED:-}" ] && seed_args=(--seed "$KORA_ST_SEED")
status=0
PYTHONPATH=.ci SCHEMATHESIS_HOOKS=schemathesis_hooks KORA_ST_EXPORT_DIR="$work/exports" \
  KORA_ST_BASE="$base" KORA_ST_TOKEN="$token" KORA_ST_SUGGESTION="$suggestion" \
  KORA_ST_CACHE="$report_dir/cache" \
  "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run schema/openapi.json \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$max_examples" \
  "${seed_args[@]}" \
  --workers 2 \
  --request-timeout 30 \
  --generation-database none \
  --report junit --report-dir "$report_dir" \
  --no-color || status=$?

# The service must have survived the run and stop cleanly.
if ! kill -0 "$server" 2>/dev/null; then
  echo "kora-telemetry serve died during the run:" >&2
  tail -n 50 "$work/stderr" >&2
  status=1
else
  kill -TERM "$server"
  if ! wait "$server"; then
    echo "kora-telemetry serve did not stop cleanly:" >&2
    tail -n 50 "$work/stderr" >&2
    status=1
  fi
  server=""
fi
if grep -q 'panicked' "$work/stderr"; then
  echo "kora-telemetry serve panicked during the run:" >&2
  grep -A5 'panicked' "$work/stderr" >&2
  status=1
fi
exit "$status"
