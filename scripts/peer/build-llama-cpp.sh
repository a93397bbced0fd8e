#!/usr/bin/env bash
# Builds llama.cpp, the peer engine we measure against, from the tree vendored in the
# llama-cpp-python sdist that made the GGUF fixtures in ../shared/gguf (see its README).
#
#   scripts/peer/build-llama-cpp.sh [DEST]        DEST defaults to <repo>/target/peer
#
# DEST/llama.cpp      the unpacked, patched source tree (never commit it)
# DEST/build-native   Release CPU build with -march=native: AMX kernels compiled in when the CPU exposes AMX
# DEST/build-noamx    the same with AMX switched off explicitly, so "without AMX" means the same on any CPU
# DEST/build-info.txt what was built: version, commit, cmake options, whether AMX code is in each build
#
# Re-running is cheap: the download, unpacking, patch and cmake configure are skipped when already done,
# and the builds are incremental. PEER_JOBS sets the parallel build jobs (default: nproc).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
# PyPI's sdist of that version; pip checks it against PyPI's hash too, this pins it against a re-upload.
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# ggml-org/llama.cpp commit vendored in that sdist (its CHANGELOG and .git/modules/vendor/llama.cpp/HEAD).
EXPECTED_COMMIT=0c1e57098bba43ac29e6e3b677cdceebdd22334f

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=${1:-$ROOT/target/peer}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
JOBS=${PEER_JOBS:-$(nproc)}

die() { echo "build-llama-cpp: error: $*" >&2; exit 1; }
say() { echo "build-llama-cpp: $*" >&2; }

[ "$(uname -m)" = x86_64 ] || die "this script builds the x86_64 peer (AMX/no-AMX pair); $(uname -m) is not supported"

# --- tools ----------------------------------------------------------------------------------------
# cmake, a C/C++ compiler and make are Debian packages; pip comes with Python. Missing ones are
# installed with apt-get when we are root (said so, not silently), otherwise the script stops.
missing_pkgs=()
command -v cmake >/dev/null || missing_pkgs+=(cmake)
command -v gcc >/dev/null || missing_pkgs+=(gcc)
command -v g++ >/dev/null || missing_pkgs+=(g++)
command -v make >/dev/null || missing_pkgs+=(make)
command -v objdump >/dev/null || missing_pkgs+=(binutils)
if [ ${#missing_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "missing ${missing_pkgs[*]}: installing Debian's packages with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
    else
        die "missing ${missing_pkgs[*]}; install them (Debian: apt-get install ${missing_pkgs[*]}) and re-run"
    fi
fi
PIP=${PIP:-$(command -v pip3 || command -v pip || true)}
[ -n "$PIP" ] || die "pip not found; install Python 3 with pip (Debian: apt-get install python3-pip) and re-run"
# llama.cpp asks for cmake >= 3.14; its UI-assets step asks for 3.18.
cmake_ver=$(cmake --version | awk 'NR==1 {print $3}')
printf "3.18\n%s\n" "$cmake_ver" | sort -V -C || die "cmake $cmake_ver is older than 3.18, which llama.cpp needs"

# --- source ---------------------------------------------------------------------------------------
SDIST=$DEST/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz
if [ ! -f "$SDIST" ]; then
    say "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist (about 77 MB) with pip"
    mkdir -p "$DEST/dl"
    "$PIP" download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$DEST/dl" >&2
fi
echo "$SDIST_SHA256  $SDIST" | sha256sum -c --quiet - ||
    die "$SDIST does not have the expected sha256 $SDIST_SHA256; delete it and re-run"

SRC_PARENT=$DEST/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION
if [ ! -f "$SRC_PARENT/vendor/llama.cpp/CMakeLists.txt" ]; then
    say "unpacking $SDIST"
    rm -rf "$DEST/src"
    mkdir -p "$DEST/src"
    tar -xzf "$SDIST" -C "$DEST/src"
fi
ln -sfn "$SRC_PARENT/vendor/llama.cpp" "$DEST/llama.cpp"
SRC=$DEST/llama.cpp

commit=$(cat "$SRC_PARENT/.git/modules/vendor/llama.cpp/HEAD" 2>/dev/null || echo unknown)
[ "$commit" = "$EXPECTED_COMMIT" ] ||
    die "the sdist's llama.cpp is at commit $commit, expected $EXPECTED_COMMIT (../shared/gguf/README.md)"

# --- the GCC 12 AMX fix ---------------------------------------------------------------------------
# GCC 12's _tile_loadconfig names only 8 bytes of the tile config as its input, so the stores that fill
# the config are optimised away and the first tileloadd raises SIGILL. A compiler barrier that takes the
# config's address keeps them (../shared/gguf/README.md, "Remaking them").
MMQ=$SRC/ggml/src/ggml-cpu/amx/mmq.cpp
FIX='__asm__ __volatile__("" : : "r"(&tc) : "memory");'
[ -f "$MMQ" ] || die "$MMQ not found: this is not the tree the fix was written for"
n_load=$(grep -c '^[[:space:]]*_tile_loadconfig(&tc);' "$MMQ" || true)
[ "$n_load" = 1 ] || die "expected one '_tile_loadconfig(&tc);' line in $MMQ, found $n_load: the fix cannot be placed"
if grep -qF "$FIX" "$MMQ"; then
    amx_fix="already applied"
else
    perl -0pi -e 's/^([ \t]*)(_tile_loadconfig\(&tc\);)/$1__asm__ __volatile__("" : : "r"(&tc) : "memory");\n$1$2/m' "$MMQ"
    amx_fix="applied now"
fi
# The fix counts only when it is the line right before the load.
prev=$(grep -B1 '^[[:space:]]*_tile_loadconfig(&tc);' "$MMQ" | head -1 | sed 's/^[[:space:]]*//')
[ "$prev" = "$FIX" ] || die "the AMX fix is not the line before _tile_loadconfig in $MMQ (found: $prev)"
[ "$(grep -cF "$FIX" "$MMQ")" = 1 ] || die "the AMX fix appears more than once in $MMQ"
say "GCC 12 AMX fix: $amx_fix ($MMQ)"

# --- configure and build --------------------------------------------------------------------------
COMMON_OPTS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=ON
    -DGGML_NATIVE=ON
    -DGGML_CPU=ON
    -DGGML_CUDA=OFF
    -DGGML_VULKAN=OFF
    -DGGML_OPENCL=OFF
    -DGGML_BLAS=OFF
    -DGGML_BACKEND_DL=OFF
    -DGGML_OPENMP=ON
    -DGGML_CCACHE=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON
    # The server's web UI would come from npm or a download at build time; the API needs neither.
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_BUILD_COMMIT="${commit:0:9}"
)
# With GGML_NATIVE=ON and GCC, ggml passes -march=native and ignores its GGML_AMX_* options (they only
# add -mamx-* when GGML_NATIVE is OFF), so on an AMX CPU -march=native turns AMX on. The no-AMX build
# sets the options off for the record and also passes -mno-amx-*, which GCC honours whatever -march says.
NOAMX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
NOAMX_OPTS=(
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    -DCMAKE_C_FLAGS="$NOAMX_FLAGS" -DCMAKE_CXX_FLAGS="$NOAMX_FLAGS"
)
TARGETS=(llama ggml ggml-base ggml-cpu llama-bench llama-cli llama-simple llama-server llama-quantize
         llama-tokenize llama-gguf)
if [ -d "$SRC/examples/convert-llama2c-to-ggml" ]; then
    TARGETS+=(llama-convert-llama2c-to-ggml)
else
    say "this tree has no examples/convert-llama2c-to-ggml; make-models.sh will need its own GGUF writer"
fi

build() { # build NAME CMAKE_OPTION...
    local name=$1; shift
    local dir=$DEST/build-$name
    say "configuring $dir"
    cmake -S "$SRC" -B "$dir" "${COMMON_OPTS[@]}" "$@" >"$dir.configure.log" 2>&1 ||
        die "cmake configure failed for $name; see $dir.configure.log"
    say "building $name (${TARGETS[*]}) with $JOBS jobs; log: $dir.build.log"
    local t0=$SECONDS
    cmake --build "$dir" --config Release -j "$JOBS" --target "${TARGETS[@]}" >"$dir.build.log" 2>&1 ||
        die "build failed for $name; see the end of $dir.build.log"
    say "built $name in $((SECONDS - t0)) s"
}

# AMX instructions in the CPU backend tell whether AMX kernels were compiled in at all.
amx_insns() { objdump -d --no-show-raw-insn "$1" | grep -cE '\b(tileloadd|tdpbssd|tdpbusd|tdpbf16ps|ldtilecfg)\b' || true; }

build native
build noamx "${NOAMX_OPTS[@]}"

cpu_amx=$(grep -m1 -owE 'amx_(tile|int8|bf16)' /proc/cpuinfo | sort -u | tr '\n' ' ' || true)
native_amx=$(amx_insns "$DEST/build-native/bin/libggml-cpu.so")
noamx_amx=$(amx_insns "$DEST/build-noamx/bin/libggml-cpu.so")
[ "$noamx_amx" = 0 ] || die "the no-AMX build still has $noamx_amx AMX instructions in libggml-cpu.so"
if [ -n "$cpu_amx" ] && [ "$native_amx" = 0 ]; then
    die "this CPU exposes AMX ($cpu_amx) but the native build has no AMX instructions"
fi

{
    echo "llama-cpp-python sdist: $LLAMA_CPP_PYTHON_VERSION (sha256 $SDIST_SHA256)"
    echo "llama.cpp commit:       $commit"
    echo "source:                 $SRC"
    echo "GCC 12 AMX fix:         $amx_fix, verified before _tile_loadconfig in ggml/src/ggml-cpu/amx/mmq.cpp"
    echo "compiler:               $(gcc --version | head -1)"
    echo "cmake:                  $cmake_ver"
    echo "gcc -march=native:      $(gcc -march=native -E -v - </dev/null 2>&1 | grep cc1 | grep -o -- '-march=[a-z0-9-]*' | grep -v native | head -1)"
    echo "CPU model:              $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
         "(family $(grep -m1 'cpu family' /proc/cpuinfo | awk '{print $NF}'), model $(grep -m1 -E '^model\s' /proc/cpuinfo | awk '{print $NF}'))"
    echo "CPU AMX flags:          ${cpu_amx:-none in /proc/cpuinfo}"
    echo "common cmake options:   $(printf '%q ' "${COMMON_OPTS[@]}")"
    echo "no-AMX extra options:   $(printf '%q ' "${NOAMX_OPTS[@]}")"
    echo "AMX instructions in build-native/bin/libggml-cpu.so: $native_amx"
    echo "AMX instructions in build-noamx/bin/libggml-cpu.so:  $noamx_amx"
} >"$DEST/build-info.txt"
cat "$DEST/build-info.txt" >&2

for name in native noamx; do
    echo "$name binaries in $DEST/build-$name/bin:"
    for t in "${TARGETS[@]}"; do
        case $t in llama | ggml*) f=$DEST/build-$name/bin/lib$t.so ;; *) f=$DEST/build-$name/bin/$t ;; esac
        [ -e "$f" ] || die "expected $f after the build"
        echo "  $f"
    done
done
