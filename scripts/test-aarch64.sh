#!/usr/bin/env bash
# Builds the workspace for aarch64-unknown-linux-gnu with Debian's Rust toolchain and runs its
# tests under qemu user-mode emulation (runner and linker: .cargo/config.toml).
# See ../shared/DESIGN.md, "aarch64 / NEON on an x86_64 machine". Emulated timings mean nothing.
#
# Usage: scripts/test-aarch64.sh [cargo test args...]
#   no package selection given  -> tests `--workspace --exclude benches` (plus any other args)
#   -p/--package/--workspace/--all/--manifest-path given (before a `--`) -> args used as they are
# Examples:
#   scripts/test-aarch64.sh                        # whole workspace except benches
#   scripts/test-aarch64.sh -p model-config        # one crate
#   scripts/test-aarch64.sh -- --nocapture         # whole workspace, test binary args
#   QEMU_CPU=cortex-a57 scripts/test-aarch64.sh    # an emulated CPU without dotprod (default: max)
# MODEL_CONFIG and BAREMETAL_FIXTURES are passed through as they are in the environment.
#
# Debian's rustc (1.96) compiles everything, including build scripts and proc-macros for the
# x86_64 host, so it never mixes with rustup's toolchain; its output goes to target/aarch64.
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
DEB_RUSTC=/usr/bin/rustc
DEB_RUSTDOC=/usr/bin/rustdoc
DEB_CARGO=/usr/bin/cargo

log() { printf 'test-aarch64: %s\n' "$*"; }
die() {
    printf 'test-aarch64: ERROR: %s\n' "$*" >&2
    printf 'test-aarch64: install the aarch64 toolchain with: scripts/install-ci-deps.sh (as root, or with sudo)\n' >&2
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# --- tools ------------------------------------------------------------------------------------
for f in "$DEB_RUSTC" "$DEB_RUSTDOC" "$DEB_CARGO"; do
    [ -x "$f" ] || die "$f not found (Debian packages rustc-web, cargo-web)"
done
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 ||
    die "aarch64-linux-gnu-gcc not found (Debian package gcc-aarch64-linux-gnu)"
command -v qemu-aarch64-static >/dev/null 2>&1 ||
    die "qemu-aarch64-static not found (Debian package qemu-user-static)"
[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] ||
    die "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 not found (Debian package libc6-dev-arm64-cross)"
for t in "$TARGET" x86_64-unknown-linux-gnu; do
    libdir="$("$DEB_RUSTC" --print target-libdir --target "$t" 2>/dev/null)" || libdir=
    compgen -G "$libdir/libstd-*.rlib" >/dev/null ||
        die "Debian's rustc has no standard library for $t in '${libdir:-?}' (Debian package libstd-rust-web-dev:$([ "$t" = "$TARGET" ] && echo arm64 || echo amd64))"
done

# Tests that spawn the crate's own binaries (CARGO_BIN_EXE_*) need the kernel to run aarch64
# executables through qemu; the installer registers that with binfmt_misc.
if ! head -n1 /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null | grep -qx enabled; then
    log "WARNING: no binfmt_misc registration for qemu-aarch64: tests that spawn the crates' binaries"
    log "WARNING: (e.g. codegen/tests/cli.rs) will fail with exit 127; scripts/install-ci-deps.sh registers it"
fi

# --- arguments --------------------------------------------------------------------------------
selection_given=false
for a in "$@"; do
    case "$a" in
    --) break ;;
    -p | -p?* | --package | --package=* | --workspace | --all | --manifest-path | --manifest-path=*)
        selection_given=true
        break
        ;;
    esac
done
ARGS=()
$selection_given || ARGS=(--workspace --exclude benches)
ARGS+=("$@")

# --- run --------------------------------------------------------------------------------------
export RUSTC="$DEB_RUSTC"
export RUSTDOC="$DEB_RUSTDOC" # doctests are cross-compiled and run under the runner too
export CARGO_TARGET_DIR="$ROOT/target/aarch64"
# A wrapper (sccache, …) configured for the rustup toolchain has no business here.
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER

log "$("$DEB_RUSTC" -V), $("$DEB_CARGO" -V), $(qemu-aarch64-static --version | head -n1)"
log "emulated CPU: ${QEMU_CPU:-default (max)}; MODEL_CONFIG=${MODEL_CONFIG-<unset: build default>}"
log "running: RUSTC=$RUSTC RUSTDOC=$RUSTDOC CARGO_TARGET_DIR=target/aarch64 $DEB_CARGO test --target $TARGET ${ARGS[*]}"

start=$SECONDS
status=0
"$DEB_CARGO" test --target "$TARGET" "${ARGS[@]}" || status=$?
if [ "$status" -eq 0 ]; then
    log "passed in $((SECONDS - start)) s"
else
    log "FAILED (exit $status) after $((SECONDS - start)) s"
fi
exit "$status"
