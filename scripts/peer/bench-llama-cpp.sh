#!/usr/bin/env bash
# The llama-bench runs that put llama.cpp next to `baremetal bench` on the same machine: prompt processing
# of 128 tokens (pp128) and generation of 256 tokens (tg256, as `baremetal bench --tokens 256`), on 1 and
# 2 threads, for the F32 / Q8_0 / Q4_0 / Q4_0-pure models of make-models.sh, with both builds of
# build-llama-cpp.sh (native: AMX kernels when the CPU exposes AMX; noamx: AMX off), 5 repetitions each.
# Run it in a quiet window: nothing else on the machine.
#
#   scripts/peer/bench-llama-cpp.sh            the full runs, JSON per build into $RESULTS
#   SMOKE=1 scripts/peer/bench-llama-cpp.sh    a 1-repetition -p 8 -n 8 pass that only checks it all runs
#
# Environment: PEER_DIR (default <repo>/target/peer), MODELS (default $PEER_DIR/models),
#              RESULTS (default $PEER_DIR/results/<UTC time>), BUILDS (default "native noamx"),
#              KV_TYPE (default f16, llama.cpp's default; this llama-bench takes only f16, bf16, q8_0, q4_0,
#              q4_1, q5_0, q5_1, iq4_nl, no f32: compare with `baremetal bench --kv-cache f16`),
#              THREADS (default 1,2), REPS (default 5), N_PROMPT (default 128), N_GEN (default 256).
#
# Each $RESULTS/<build>.json is llama-bench's `-o json` array: one object per (model, threads, test) with
# avg_ts / stddev_ts (tokens/s) and samples_ns, plus the build commit, CPU info, type_k/type_v, flash_attn
# and n_threads. llama-bench's own stderr (model load, backend) goes to $RESULTS/<build>.log.
#
# The baremetal side, for the same shape (commands, not run here):
#   MODEL_CONFIG=stories110m cargo build --release -p engine
#   target/release/baremetal bench --tokens 256 --threads 1 --kv-cache f16 --json    (and --threads 2)
#   target/release/baremetal bench --model $MODELS/stories110m-synth-seed0.v0.bin --tokens 256 --threads 1 \
#       --kv-cache f16 --json
#     (the very weights the GGUF files were converted from; bench realigns v0 at load)
#   target/release/baremetal quantize $MODELS/stories110m-synth-seed0.v0.bin /tmp/s110-q8.bin --format q8_0
#     (group 64 by default; --group 32 is llama.cpp's Q8_0 block) and --format q4_0 (group 32, as Q4_0),
#     then bench --model on each
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEER_DIR=${PEER_DIR:-$ROOT/target/peer}
MODELS=${MODELS:-$PEER_DIR/models}
BUILDS=${BUILDS:-native noamx}
KV_TYPE=${KV_TYPE:-f16}
THREADS=${THREADS:-1,2}
NAME=${NAME:-stories110m-synth}

die() { echo "bench-llama-cpp: error: $*" >&2; exit 1; }

if [ "${SMOKE:-0}" = 1 ]; then
    REPS=1 N_PROMPT=8 N_GEN=8
    RESULTS=${RESULTS:-$PEER_DIR/results/smoke}
else
    REPS=${REPS:-5} N_PROMPT=${N_PROMPT:-128} N_GEN=${N_GEN:-256}
    RESULTS=${RESULTS:-$PEER_DIR/results/$(date -u +%Y%m%dT%H%M%SZ)}
fi

case $KV_TYPE in
    f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | iq4_nl) ;;
    *) die "KV_TYPE=$KV_TYPE: llama-bench takes f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 or iq4_nl (no f32)" ;;
esac

models=()
for q in f32 q8_0 q4_0 q4_0-pure; do
    f=$MODELS/$NAME-$q.gguf
    [ -f "$f" ] || die "$f not found; make the models with scripts/peer/make-models.sh"
    models+=("$f")
done
model_list=$(IFS=,; echo "${models[*]}")
mkdir -p "$RESULTS"

for build in $BUILDS; do
    bench=$PEER_DIR/build-$build/bin/llama-bench
    [ -x "$bench" ] || die "$bench not found; build it with scripts/peer/build-llama-cpp.sh"
    cmd=("$bench" -m "$model_list" -p "$N_PROMPT" -n "$N_GEN" -t "$THREADS" -r "$REPS"
         -ctk "$KV_TYPE" -ctv "$KV_TYPE" -o json)
    echo "+ ${cmd[*]} > $RESULTS/$build.json" >&2
    "${cmd[@]}" >"$RESULTS/$build.json" 2>"$RESULTS/$build.log" ||
        die "llama-bench ($build) failed; see $RESULTS/$build.log"
    # One line per result, to read at a glance; the JSON is the record.
    python3 - "$RESULTS/$build.json" "$build" <<'EOF' >&2
import json, os, sys
rows = json.load(open(sys.argv[1]))
for r in rows:
    test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
    print(f"  {sys.argv[2]:6} {os.path.basename(r['model_filename']):34} {r['type_k']:>4} kv  t={r['n_threads']}  "
          f"{test:6} {r['avg_ts']:9.2f} ± {r['stddev_ts']:.2f} tok/s")
EOF
done
echo "results in $RESULTS" >&2
