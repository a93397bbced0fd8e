#!/usr/bin/env bash
# Runs `baremetal serve` on a loopback port and checks it with real clients:
#   scripts/ci-serve-checks.sh openai   the official `openai` Python package (pip-installed into a
#                                       virtualenv under target/): scripts/serve_openai_check.py
#   scripts/ci-serve-checks.sh load     the bounded load test, 16 clients x 8 requests:
#                                       scripts/serve_load.py (standard library only)
# Then SIGTERM, which must stop the server with exit 0.
#
# The model is synthesised (a tiny random-weight model with the Llama 2 vocabulary), with
# ../shared/models/tokenizer.bin (or $BAREMETAL_FIXTURES/models/tokenizer.bin). Uses the debug
# build of the workspace (cargo build), so it reuses what `cargo test` compiled.
set -euo pipefail

MODE="${1:?usage: scripts/ci-serve-checks.sh openai|load}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FIXTURES="${BAREMETAL_FIXTURES:-$ROOT/../shared}"
TOKENIZER="$FIXTURES/models/tokenizer.bin"
[ -f "$TOKENIZER" ] || { echo "ci-serve-checks: $TOKENIZER not found (set BAREMETAL_FIXTURES)" >&2; exit 1; }

cargo build -q -p engine --bin baremetal
BIN="$ROOT/target/debug/baremetal"
WORK="$ROOT/target/ci-serve"
mkdir -p "$WORK"
cat >"$WORK/tiny.toml" <<'EOF'
name = "tiny32k"
dim = 32
hidden_dim = 64
n_layers = 2
n_heads = 4
n_kv_heads = 2
vocab_size = 32000
seq_len = 256
shared_classifier = true
EOF
"$BIN" synth --config "$WORK/tiny.toml" --out "$WORK/tiny.bin" --seed 3

PYTHON=python3
if [ "$MODE" = openai ]; then
    VENV="$WORK/venv"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'openai>=1.0'
    PYTHON="$VENV/bin/python"
    "$PYTHON" -c 'import openai; print("openai", openai.__version__)'
fi

LOG="$WORK/server-$MODE.log"
"$BIN" serve --model "$WORK/tiny.bin" --tokenizer "$TOKENIZER" --port 0 --generic --parallel 4 --queue 64 \
    --alias tiny --shutdown-timeout 10 2>"$LOG" &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; }
trap cleanup EXIT
ADDR=""
for _ in $(seq 1 300); do
    ADDR="$(grep -o 'listening on http://[0-9.:]*' "$LOG" | head -n1 | sed 's#listening on http://##')" || true
    [ -n "$ADDR" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; echo "ci-serve-checks: the server exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$ADDR" ] || { cat "$LOG" >&2; echo "ci-serve-checks: the server did not start" >&2; exit 1; }
echo "ci-serve-checks: server at $ADDR (pid $PID)"

case "$MODE" in
openai) "$PYTHON" scripts/serve_openai_check.py --base-url "http://$ADDR/v1" ;;
load) "$PYTHON" scripts/serve_load.py --url "http://$ADDR" --concurrency 16 --requests 8 \
    --max-tokens 24 --deadline 300 --timeout 60 ;;
*) echo "ci-serve-checks: unknown mode $MODE (openai or load)" >&2; exit 2 ;;
esac

kill -TERM "$PID"
STATUS=0
wait "$PID" || STATUS=$?
trap - EXIT
cat "$LOG"
if [ "$STATUS" -ne 0 ]; then
    echo "ci-serve-checks: the server exited with $STATUS after SIGTERM (expected 0)" >&2
    exit 1
fi
echo "ci-serve-checks: $MODE checks passed; SIGTERM stopped the server with exit 0"
