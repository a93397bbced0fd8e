#!/usr/bin/env bash
# Makes the peer's GGUF models of the stories110M shape: F32, Q8_0, Q4_0 (llama-quantize's default mix)
# and Q4_0 --pure (every matrix Q4_0, as `baremetal quantize --format q4_0` does).
#
#   scripts/peer/make-models.sh [CHECKPOINT.bin]
#
# CHECKPOINT is a llama2.c v0 (legacy) checkpoint with a 32000-token vocabulary. Without it, one is
# synthesised with our own binary (`baremetal synth --config stories110m --format v0 --seed 0`: random
# weights, the right shape; speed does not depend on the values).
#
# Environment: PEER_DIR (default <repo>/target/peer, where build-llama-cpp.sh put the builds),
#              OUT (default $PEER_DIR/models), BAREMETAL_FIXTURES (default <repo>/../shared).
#
# The conversion is llama.cpp's own llama2.c converter with the Llama 2 (SentencePiece) vocabulary of
# ../shared/gguf/vocab/ggml-vocab-llama-spm.gguf. Two things it does that matter here:
#  * it writes llama.context_length = 128 (its built-in training default, not the checkpoint's seq_len),
#    which would make llama-server default to a 128-token context and llama-bench warn for pp128+tg128;
#    a llama-quantize COPY pass with --override-kv sets it to the checkpoint's seq_len;
#  * it always writes output.weight, a copy of the embedding when the checkpoint shares it: the file is
#    larger, but a decoded token still reads one vocab x dim classifier, as in the tied model.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEER_DIR=${PEER_DIR:-$ROOT/target/peer}
OUT=${OUT:-$PEER_DIR/models}
FIXTURES=${BAREMETAL_FIXTURES:-$ROOT/../shared}
BIN=$PEER_DIR/build-native/bin
VOCAB=$FIXTURES/gguf/vocab/ggml-vocab-llama-spm.gguf
NAME=stories110m

die() { echo "make-models: error: $*" >&2; exit 1; }
say() { echo "make-models: $*" >&2; }

for t in llama-convert-llama2c-to-ggml llama-quantize llama-simple; do
    [ -x "$BIN/$t" ] || die "$BIN/$t not found; build llama.cpp first with scripts/peer/build-llama-cpp.sh"
done
[ -f "$VOCAB" ] || die "vocabulary $VOCAB not found; set BAREMETAL_FIXTURES to the shared fixtures folder"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- the llama2.c checkpoint ----------------------------------------------------------------------
if [ $# -ge 1 ]; then
    CKPT=$1
    [ -f "$CKPT" ] || die "checkpoint $CKPT not found"
    NAME=$(basename "$CKPT" .bin)
else
    CKPT=$OUT/$NAME-synth-seed0.v0.bin
    NAME=$NAME-synth
    if [ ! -f "$CKPT" ]; then
        BAREMETAL=${BAREMETAL:-$ROOT/target/release/baremetal}
        if [ ! -x "$BAREMETAL" ]; then
            say "building baremetal (synth is the same in every build; stories110m is what bench uses)"
            (cd "$ROOT" && MODEL_CONFIG=${MODEL_CONFIG:-stories110m} cargo build --release -p engine)
        fi
        say "synthesising $CKPT"
        "$BAREMETAL" synth --config stories110m --format v0 --seed 0 --out "$CKPT.partial"
        mv "$CKPT.partial" "$CKPT"
    fi
fi

# The converter reads only the legacy v0 layout: 7 little-endian i32 (dim, hidden_dim, n_layers,
# n_heads, n_kv_heads, vocab_size (negative: unshared classifier), seq_len), then f32 tensors.
read -r -a hdr <<<"$(od -An -t d4 -N 28 -v "$CKPT" | tr -s " \n" " ")"
[ ${#hdr[@]} = 7 ] || die "$CKPT is shorter than a llama2.c header"
# v1/v2 files start with the magic "ak42" as a little-endian u32: bytes 32 34 6b 61.
if [ "$(od -An -tx1 -N4 "$CKPT" | tr -d ' \n')" = 32346b61 ]; then
    die "$CKPT is a llama2.c v1/v2 file; llama.cpp's converter reads only v0: write one with 'baremetal synth --format v0' or llama2.c's export.py --version 0"
fi
vocab=${hdr[5]#-}
seq_len=${hdr[6]}
[ "$vocab" = 32000 ] ||
    die "$CKPT has a vocabulary of $vocab tokens, but the Llama 2 vocabulary in $VOCAB has 32000"
say "checkpoint $CKPT: dim ${hdr[0]}, hidden ${hdr[1]}, layers ${hdr[2]}, heads ${hdr[3]}/${hdr[4]}, vocab ${hdr[5]}, seq_len $seq_len"

# --- convert, fix the context length, quantise ----------------------------------------------------
RAW=$OUT/$NAME-f32.converted.gguf
F32=$OUT/$NAME-f32.gguf
log=$OUT/$NAME.make.log
: >"$log"
say "converting with llama-convert-llama2c-to-ggml (log: $log)"
"$BIN/llama-convert-llama2c-to-ggml" --copy-vocab-from-model "$VOCAB" --llama2c-model "$CKPT" \
    --llama2c-output-model "$RAW" >>"$log" 2>&1 || die "the converter failed; see $log"
"$BIN/llama-quantize" --override-kv "llama.context_length=int:$seq_len" \
    --override-kv "general.name=str:$NAME" "$RAW" "$F32" COPY >>"$log" 2>&1 ||
    die "llama-quantize COPY (context length fix) failed; see $log"
rm -f "$RAW"

quantize() { # quantize SUFFIX TYPE [llama-quantize flags...]
    local suffix=$1 type=$2; shift 2
    local out=$OUT/$NAME-$suffix.gguf
    say "quantising to $suffix"
    echo "== llama-quantize $* $F32 $out $type" >>"$log"
    "$BIN/llama-quantize" "$@" "$F32" "$out" "$type" >"$out.quantize.log" 2>&1 ||
        die "llama-quantize $type failed; see $out.quantize.log"
    # One line per tensor: name and the type it was written in (Q4_0's default mix differs by tensor).
    sed -nE 's/^\[ *[0-9]+\/ *[0-9]+\] +([^ ]+) +- .*type = +([A-Za-z0-9_]+),( converting to ([A-Za-z0-9_]+))?.*/\1 \2 \4/p' \
        "$out.quantize.log" | awk '{print $1, ($3 == "" ? $2 : $3)}' >"$out.types.txt"
    [ -s "$out.types.txt" ] || die "could not read the tensor types from $out.quantize.log"
}
quantize q8_0 Q8_0
quantize q4_0 Q4_0
quantize q4_0-pure Q4_0 --pure

# --- check that each file loads and decodes -------------------------------------------------------
# Random weights print nonsense; the check is that llama.cpp loads the file and decodes a token.
for f in "$F32" "$OUT/$NAME-q8_0.gguf" "$OUT/$NAME-q4_0.gguf" "$OUT/$NAME-q4_0-pure.gguf"; do
    slog=$f.simple.log
    "$BIN/llama-simple" -m "$f" -n 2 "Once upon a time" >"$f.simple.out" 2>"$slog" ||
        die "llama-simple failed on $f; see $slog"
    n=$(sed -nE 's/.*decoded ([0-9]+) tokens.*/\1/p' "$slog")
    [ "${n:-0}" -ge 1 ] || die "llama-simple decoded no token with $f; see $slog"
    ctx=$(sed -nE 's/.*n_ctx_train += ([0-9]+).*/\1/p' "$slog" | head -1)
    [ "$ctx" = "$seq_len" ] || die "$f has context length ${ctx:-?}, expected $seq_len; see $slog"
    text=$(tr -d '\n' <"$f.simple.out")
    say "ok: $(basename "$f") loads, n_ctx_train $ctx, decoded $n tokens: \"$text\""
done

echo "models in $OUT:"
for f in "$OUT"/*.gguf; do
    echo "  $f  $(stat -c %s "$f") bytes"
done
