#!/usr/bin/env bash
# Installs what CI (and scripts/test-aarch64.sh) needs beyond the rustup toolchain:
# Debian's Rust toolchain with an aarch64 standard library, the aarch64 cross linker and libc,
# and qemu user-mode emulation. See ../shared/DESIGN.md, "aarch64 / NEON on an x86_64 machine".
#
# Idempotent: when everything is already installed it only checks and exits (no apt-get update).
# Runs as root; otherwise uses sudo if available. Debian/Ubuntu (dpkg + apt-get) only.
set -euo pipefail

log() { printf 'install-ci-deps: %s\n' "$*"; }
die() {
    printf 'install-ci-deps: ERROR: %s\n' "$*" >&2
    exit 1
}

# Package names exactly as dpkg reports them once installed (arch-qualified where it matters).
# libstd-rust-web-dev:amd64 is the host (x86_64) std that build scripts and proc-macros are
# compiled against by Debian's rustc; rustc-web depends on it, it is listed to be explicit.
# libc6:arm64 (a dependency of libstd-rust-web-dev:arm64) is the aarch64 loader + libc the
# emulated tests run with; libc6-dev-arm64-cross is what aarch64-linux-gnu-gcc links against.
PACKAGES=(
    rustc-web
    cargo-web
    libstd-rust-web-dev:amd64
    libstd-rust-web-dev:arm64
    libc6:arm64
    gcc-aarch64-linux-gnu
    libc6-dev-arm64-cross
    qemu-user-static
)

if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    die "this installer needs dpkg and apt-get (Debian 12 'bookworm' or similar); install the packages by hand: ${PACKAGES[*]}"
fi

[ "$(dpkg --print-architecture)" = amd64 ] ||
    die "expected an amd64 (x86_64) host, found '$(dpkg --print-architecture)'"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
        log "not root: using sudo"
    else
        die "must run as root (or with sudo available) to install packages"
    fi
fi

is_installed() {
    # "install ok installed" is the only state in which the package's files are all in place.
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing_from() {
    local p
    for p in "$@"; do
        is_installed "$p" || printf '%s\n' "$p"
    done
}

mapfile -t MISSING < <(missing_from "${PACKAGES[@]}")

if [ "${#MISSING[@]}" -eq 0 ]; then
    log "all packages already installed: ${PACKAGES[*]}"
else
    export DEBIAN_FRONTEND=noninteractive
    # Wait for a dpkg lock held by another apt process instead of failing at once.
    LOCK_WAIT=(-o DPkg::Lock::Timeout=600)
    APT_OPTS=(-y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${LOCK_WAIT[@]}")

    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "running: dpkg --add-architecture arm64"
        "${SUDO[@]}" dpkg --add-architecture arm64 || die "dpkg --add-architecture arm64 failed"
    fi

    log "running: apt-get update"
    "${SUDO[@]}" apt-get update -q "${LOCK_WAIT[@]}" ||
        die "apt-get update failed (is the network to the Debian mirrors reachable? do the apt sources carry arm64?)"

    log "installing: ${MISSING[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" "${MISSING[@]}" ||
        die "apt-get install failed for: ${MISSING[*]}"

    mapfile -t STILL_MISSING < <(missing_from "${PACKAGES[@]}")
    [ "${#STILL_MISSING[@]}" -eq 0 ] || die "still not installed after apt-get: ${STILL_MISSING[*]}"
fi

# --- binfmt_misc: let the kernel run aarch64 executables through qemu --------------------------
# The test binaries themselves are started through the cargo runner (.cargo/config.toml), but
# tests that spawn the crate's own binaries (CARGO_BIN_EXE_*, e.g. codegen/tests/cli.rs) make
# the kernel exec an aarch64 ELF: without this registration that fails (exit 127).
# This is what installing qemu-user-static does on a booted system with systemd-binfmt; in a VM
# or container without it, register by hand. Flag F makes the kernel keep the interpreter open,
# so it also works inside chroots/containers. Undo with: echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64
BINFMT_DIR=/proc/sys/fs/binfmt_misc
BINFMT_CONF=/usr/lib/binfmt.d/qemu-aarch64.conf
binfmt_problem() {
    if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
        die "$1"
    fi
    log "warning: $1"
    log "warning: aarch64 tests that spawn the crate's binaries will fail under scripts/test-aarch64.sh"
}
register_binfmt() {
    if [ ! -e "$BINFMT_DIR/register" ]; then
        grep -qw binfmt_misc /proc/filesystems ||
            { binfmt_problem "the kernel has no binfmt_misc support"; return 0; }
        log "running: mount -t binfmt_misc binfmt_misc $BINFMT_DIR"
        "${SUDO[@]}" mount -t binfmt_misc binfmt_misc "$BINFMT_DIR" ||
            { binfmt_problem "could not mount binfmt_misc on $BINFMT_DIR"; return 0; }
    fi
    if [ -e "$BINFMT_DIR/qemu-aarch64" ]; then
        if head -n1 "$BINFMT_DIR/qemu-aarch64" | grep -qx enabled; then
            log "binfmt_misc: qemu-aarch64 already registered"
            return 0
        fi
        log "running: echo 1 > $BINFMT_DIR/qemu-aarch64 (enable)"
        echo 1 | "${SUDO[@]}" tee "$BINFMT_DIR/qemu-aarch64" >/dev/null ||
            binfmt_problem "could not enable $BINFMT_DIR/qemu-aarch64"
        return 0
    fi
    local rule
    if [ -r "$BINFMT_CONF" ]; then
        rule="$(grep -m1 '^:qemu-aarch64:' "$BINFMT_CONF")"
    else
        rule=':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F'
    fi
    log "registering binfmt_misc rule: $rule"
    printf '%s\n' "$rule" | "${SUDO[@]}" tee "$BINFMT_DIR/register" >/dev/null ||
        binfmt_problem "could not register qemu-aarch64 in $BINFMT_DIR"
}
register_binfmt

# Check the tools, not just the packages.
for tool in /usr/bin/rustc /usr/bin/rustdoc /usr/bin/cargo aarch64-linux-gnu-gcc qemu-aarch64-static; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is missing although its package is installed"
done
[ -d /usr/aarch64-linux-gnu/lib ] || die "/usr/aarch64-linux-gnu/lib is missing (package libc6-dev-arm64-cross)"
[ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib ] ||
    die "/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib is missing (package libstd-rust-web-dev:arm64)"
[ -d /usr/lib/rustlib/x86_64-unknown-linux-gnu/lib ] ||
    die "/usr/lib/rustlib/x86_64-unknown-linux-gnu/lib is missing (package libstd-rust-web-dev:amd64)"

log "ok: $(/usr/bin/rustc -V) / $(/usr/bin/cargo -V) / $(qemu-aarch64-static --version | head -n1)"
