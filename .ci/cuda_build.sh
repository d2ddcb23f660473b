#!/usr/bin/env bash
# Compile and link the CUDA build of fcn_repro._C on a machine without a GPU.
#
# Why: the project's build machines have nvcc (/usr/local/cuda, CUDA 13) but no
# GPU and a CPU-only torch. A CUDA-enabled torch (torch==2.14.1, CUDA 13 build,
# ~5.5 GB, installed from local disk) goes into a separate venv, and the
# extension is built there with FORCE_CUDA=1 into a temporary directory, never
# in place: the CPU fcn_repro/_C*.so in the source tree that the tests import
# is left untouched.
#
# Environment:
#   CUDA_VENV            venv path (created or reused), default /tmp/fcn_cuda_venv
#   CUDA_HOME            default /usr/local/cuda
#   TORCH_CUDA_ARCH_LIST default "9.0"
#   CUDA_BUILD_DIR       where build temp + lib go, default: a fresh mktemp -d (removed
#                        on success unless KEEP_CUDA_BUILD=1)
#   MAX_JOBS             parallel compile jobs (ninja), default 2
#   CUDA_SO              an extension already built with CUDA in CUDA_VENV (e.g. by the README's
#                        install under the default CUDA torch, as .ci/run does on Python 3.13):
#                        step 2 is skipped and that .so is checked instead (it must hold sm_90)
#   CUDA_BUILD_TESTS     1 (default): also run tests/test_ops*.py on the built module
#                        (CPU kernels under the venv's torch; CUDA tests skip without a GPU)
#   CUDA_GATES           1 (default): the static gates of step 5 (every .cu compiled on its own
#                        with ptxas statistics and the PTX kept)
# Static gates (step 5), each a failure when broken:
#   - every __global__ kernel declares __launch_bounds__ (grep);
#   - nvcc --Werror all-warnings: no nvcc/cudafe/ptxas warning in our code;
#   - ptxas -v,-warn-spills,-warn-lmem-usage: 0 bytes spill stores/loads and 0 bytes
#     stack frame (no local memory) for every kernel;
#   - no fma. instruction in the PTX: the CPU kernels round a*b+c as two operations
#     (-ffp-contract=off) and the bit-exactness of the two backends depends on
#     nvcc --fmad=false.
# Steps: --venv-only creates/reuses the venv and stops.
# Exit status: non-zero on any failure (venv, build, missing .so, no CUDA kernels in
# it, import or registration failure, failing op tests).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CUDA_VENV="${CUDA_VENV:-/tmp/fcn_cuda_venv}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
TORCH_SPEC="torch==2.14.1"

log() { printf '[cuda_build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAILED: $*"; exit 1; }

[ -x "$CUDA_HOME/bin/nvcc" ] || fail "nvcc not found at $CUDA_HOME/bin/nvcc (set CUDA_HOME)"
export PATH="$CUDA_HOME/bin:$PATH"

# ---- 1. venv with a CUDA build of torch (reused when it already has one) ----
t0=$SECONDS
if [ -n "${CUDA_SO:-}" ]; then
    # the venv the given .so was built in, whatever its CUDA torch
    [ -x "$CUDA_VENV/bin/python" ] || fail "CUDA_SO given but no venv at CUDA_VENV=$CUDA_VENV"
    log "using venv $CUDA_VENV (the one CUDA_SO was built in)"
elif [ -x "$CUDA_VENV/bin/python" ] && "$CUDA_VENV/bin/python" - <<'PY' 2>/dev/null
import sys, torch
sys.exit(0 if torch.version.cuda and torch.__version__.startswith("2.14.1") else 1)
PY
then
    log "reusing venv $CUDA_VENV"
else
    log "creating venv $CUDA_VENV with $TORCH_SPEC (CUDA build, ~5.5 GB from local disk)"
    rm -rf "$CUDA_VENV"
    python3 -m venv "$CUDA_VENV" || fail "python3 -m venv $CUDA_VENV"
    "$CUDA_VENV/bin/pip" install -q "$TORCH_SPEC" numpy setuptools ninja pybind11 wheel pytest \
        || fail "pip install $TORCH_SPEC into $CUDA_VENV"
fi
PY="$CUDA_VENV/bin/python"
"$PY" - <<'PY' || fail "torch in $CUDA_VENV is not a CUDA build"
import torch
assert torch.version.cuda, "torch.version.cuda is None"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
if [ "${CUDA_BUILD_TESTS:-1}" = 1 ] && ! "$PY" -c 'import pytest' 2>/dev/null; then
    "$CUDA_VENV/bin/pip" install -q pytest || fail "pip install pytest into $CUDA_VENV"
fi
venv_s=$((SECONDS - t0))
log "venv ready in ${venv_s}s"
if [ "${1:-}" = "--venv-only" ]; then exit 0; fi

# ---- 2. build the extension with nvcc into a temporary directory ----
# setup.py finds the CUDA headers the pip nvidia packages carry (cusparse.h, ...) and the
# toolkit behind a wrapper nvcc; the gates below call nvcc directly and ask it for the same.
PIP_CUDA_INCS="$(cd "$SRC" && "$PY" -c 'import setup; print("\n".join(setup.pip_cuda_include_dirs()))')" \
    || fail "setup.pip_cuda_include_dirs()"
[ -n "$PIP_CUDA_INCS" ] || fail "no nvidia/*/include beside torch in $CUDA_VENV (torch's CUDA headers include cusparse.h from there)"
export FORCE_CUDA=1

BUILD="${CUDA_BUILD_DIR:-$(mktemp -d /tmp/fcn_cuda_build.XXXXXX)}"
mkdir -p "$BUILD"
if [ -n "${CUDA_SO:-}" ]; then
    [ -s "$CUDA_SO" ] || fail "CUDA_SO=$CUDA_SO: no such file"
    mkdir -p "$BUILD/lib/fcn_repro" "$BUILD/src"
    cp "$CUDA_SO" "$BUILD/lib/fcn_repro/"
    ( cd "$SRC" && tar --exclude='__pycache__' --exclude='*.so' --exclude='*.egg-info' \
          -cf - setup.py csrc fcn_repro ) | tar -C "$BUILD/src" -xf - || fail "copy sources to $BUILD/src"
    log "checking $CUDA_SO (built elsewhere in this venv) instead of building"
    build_s=0
else
# Build from a copy of the sources (setup.py, csrc/, the package without any
# .so) so that nothing (egg-info, .so, build/) is written into the source tree.
mkdir -p "$BUILD/src"
( cd "$SRC" && tar --exclude='__pycache__' --exclude='*.so' --exclude='*.egg-info' \
      -cf - setup.py csrc fcn_repro ) | tar -C "$BUILD/src" -xf - || fail "copy sources to $BUILD/src"
t1=$SECONDS
log "building in $BUILD (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
( cd "$BUILD/src" && "$PY" setup.py -q build_ext --build-temp "$BUILD/temp" --build-lib "$BUILD/lib" ) \
    > "$BUILD/build.log" 2>&1 || { tail -n 60 "$BUILD/build.log"; fail "build_ext (log: $BUILD/build.log)"; }
build_s=$((SECONDS - t1))
grep -q "sm_90" "$BUILD/build.log" || fail "nvcc was not run for sm_90 (see $BUILD/build.log)"
fi

# ---- 3. checks: the .so exists, holds sm_90 device code with our kernels, and
#      their host-side launch stubs (only nvcc produces those) ----
SO="$(ls "$BUILD"/lib/fcn_repro/_C*.so 2>/dev/null | head -n1 || true)"
[ -n "$SO" ] && [ -s "$SO" ] || fail "no fcn_repro/_C*.so under $BUILD/lib"
log "built $SO ($(stat -c %s "$SO") bytes) in ${build_s}s"
# (listings go to files first: `cmd | grep -q` under pipefail fails when grep's early exit
#  gives cmd a SIGPIPE, which happened with .nv_fatbin listed near the top)
readelf -S -W "$SO" > "$BUILD/sections.txt" || fail "readelf $SO"
grep -q '\.nv_fatbin' "$BUILD/sections.txt" || fail "no .nv_fatbin (device code) section in $SO"
objcopy -O binary --only-section=.nv_fatbin "$SO" "$BUILD/fatbin.bin" || fail "objcopy .nv_fatbin from $SO"
fatbin_bytes=$(stat -c %s "$BUILD/fatbin.bin")
[ "$fatbin_bytes" -gt 0 ] || fail "empty .nv_fatbin in $SO"
grep -a -q "sm_90" "$BUILD/fatbin.bin" || fail "no sm_90 device code in the .nv_fatbin of $SO"
log "device code: .nv_fatbin $fatbin_bytes bytes, for $(grep -a -o 'sm_[0-9]*' "$BUILD/fatbin.bin" | sort -u | tr '\n' ' ')"
nm -C "$SO" > "$BUILD/syms.txt" || fail "nm $SO"
if [ -x "$CUDA_HOME/bin/cuobjdump" ]; then
    "$CUDA_HOME/bin/cuobjdump" --list-elf "$SO" > "$BUILD/cubins.txt" || fail "cuobjdump $SO"
    grep -q sm_90 "$BUILD/cubins.txt" || fail "cuobjdump: no sm_90 cubin in $SO"
fi
missing=0
for k in deconv2d_fwd_kernel deconv2d_diag_check_kernel deconv2d_grad_input_kernel \
         deconv2d_grad_weight_kernel deconv2d_grad_bias_kernel crop_sum_fwd_kernel crop_sum_bwd_kernel; do
    host=$(grep -c "fcn_repro::.*${k}<" "$BUILD/syms.txt" || true)
    # device side: the kernel's mangled name in the (uncompressed) fatbin, when readable
    dev=$(grep -a -c "$k" "$BUILD/fatbin.bin" || true)
    log "kernel $k: $host host stub symbol(s), $dev fatbin name hit(s)"
    [ "$host" -ge 2 ] || missing=1   # float and double instantiations
    [ "$dev" -ge 1 ] || missing=1
done
[ $missing = 0 ] || fail "CUDA kernels missing from $SO"
# The CUDA kernels must be registered: the TORCH_LIBRARY_IMPL(fcn_repro, CUDA) blocks are linked in.
grep -q "TORCH_LIBRARY_IMPL_static_init_fcn_repro_CUDA" "$BUILD/syms.txt" \
    || fail "no TORCH_LIBRARY_IMPL(fcn_repro, CUDA) registration in $SO"

# ---- 3b. static gates on the CUDA sources ----
if [ "${CUDA_GATES:-1}" = 1 ]; then
    t3=$SECONDS
    kernels=$(cat "$SRC"/csrc/cuda/*.cu | grep -c '__global__' || true)
    bounded=$(cat "$SRC"/csrc/cuda/*.cu | grep -c '__global__ void __launch_bounds__(' || true)
    [ "$kernels" -gt 0 ] && [ "$kernels" = "$bounded" ] \
        || fail "__launch_bounds__ missing: $bounded of $kernels __global__ kernels in csrc/cuda declare it"
    TORCH_INC="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')"
    PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    mkdir -p "$BUILD/gates"
    for cu in "$SRC"/csrc/cuda/*.cu; do
        base=$(basename "$cu" .cu)
        keep="$BUILD/gates/$base"
        mkdir -p "$keep"
        # the flags of setup.py's nvcc step (-O3 --fmad=false), plus the gates'
        "$CUDA_HOME/bin/nvcc" -c "$cu" -o "$keep/$base.o" -std=c++20 -O3 --fmad=false \
            -gencode arch=compute_90,code=sm_90 -Xcompiler -fPIC --expt-relaxed-constexpr \
            -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
            -D__CUDA_NO_HALF2_OPERATORS__ -DFCN_REPRO_WITH_CUDA -DTORCH_EXTENSION_NAME=_C \
            -I"$SRC/csrc" -I"$SRC/csrc/include" -isystem "$TORCH_INC" \
            -isystem "$TORCH_INC/torch/csrc/api/include" -isystem "$PY_INC" $(printf -- '-isystem %s ' $PIP_CUDA_INCS) \
            -Xptxas -v,-warn-spills,-warn-lmem-usage --Werror all-warnings --keep --keep-dir "$keep" \
            > "$keep/nvcc.log" 2>&1 || { tail -n 40 "$keep/nvcc.log"; fail "nvcc gate build of $cu (warnings are errors)"; }
        entries=$(grep -c "Compiling entry function" "$keep/nvcc.log" || true)
        [ "$entries" -gt 0 ] || fail "$base: no ptxas statistics in $keep/nvcc.log"
        bad=$(grep -E "bytes stack frame|spill stores|spill loads" "$keep/nvcc.log" \
              | grep -E "[1-9][0-9]* bytes (stack frame|spill stores|spill loads)" || true)
        [ -z "$bad" ] || { echo "$bad"; fail "$base: spills or local memory (stack frame) in a kernel"; }
        ptx=$(ls "$keep"/*.ptx 2>/dev/null | head -n1 || true)
        [ -n "$ptx" ] && [ -s "$ptx" ] || fail "$base: no PTX kept in $keep"
        fmas=$(grep -cE '^[[:space:]]*fma\.' "$ptx" || true)
        [ "$fmas" = 0 ] || fail "$base: $fmas fma. instructions in $ptx (bit-exactness needs --fmad=false)"
        log "gate $base: $entries kernels, 0 spills, 0 bytes stack frame, no fma. in $(wc -l < "$ptx") PTX lines"
    done
    log "static gates passed in $((SECONDS - t3))s ($kernels kernels with __launch_bounds__)"
fi

# ---- 4. the built module loads under the CUDA torch (no GPU needed) and has
#      CPU and CUDA kernels for every op; then the CPU op tests run on it ----
( cd "$BUILD/lib" && "$PY" - <<'PY' ) || fail "importing the CUDA build failed"
import torch
import fcn_repro._C  # noqa: F401  (a namespace package here: only the .so)
has = torch._C._dispatch_has_kernel_for_dispatch_key
ops = ["deconv2d", "deconv2d_crop", "crop_sum", "_deconv2d_grad_input", "_deconv2d_grad_weight",
       "_deconv2d_grad_bias", "_crop_sum_backward", "_deconv2d_crop_path", "_deconv2d_is_diagonal"]
missing = [f"{op}/{key}" for op in ops for key in ("CPU", "CUDA") if not has(f"fcn_repro::{op}", key)]
assert not missing, f"kernels not registered: {missing}"
print(f"import OK under torch {torch.__version__}: {len(ops)} ops with CPU and CUDA kernels")
PY
if [ "${CUDA_BUILD_TESTS:-1}" = 1 ]; then
    t2=$SECONDS
    cp "$SO" "$BUILD/src/fcn_repro/"
    mkdir -p "$BUILD/src/tests/fixtures/caffe"
    cp "$SRC/pytest.ini" "$BUILD/src/"
    cp "$SRC/tests/fixtures/caffe/make_fixtures.py" "$BUILD/src/tests/fixtures/caffe/"  # conftest.py loads it
    cp "$SRC/tests/conftest.py" "$SRC/tests/test_ops.py" "$SRC/tests/test_ops_cuda.py" \
        "$SRC/tests/test_hostile_ops.py" "$BUILD/src/tests/"
    ( cd "$BUILD/src" && "$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_ops_cuda.py \
        tests/test_hostile_ops.py ) \
        > "$BUILD/tests.log" 2>&1 || { tail -n 40 "$BUILD/tests.log"; fail "op tests on the CUDA build"; }
    log "op tests on the CUDA build (CPU kernels, torch of the venv): $(tail -n 1 "$BUILD/tests.log") in $((SECONDS - t2))s"
fi

log "OK: venv ${venv_s}s, build ${build_s}s, total $((SECONDS - t0))s"
if [ -z "${CUDA_BUILD_DIR:-}" ] && [ "${KEEP_CUDA_BUILD:-0}" != 1 ]; then rm -rf "$BUILD"; fi
