#!/usr/bin/env bash
# GPU checks and benchmarks of the CUDA kernel, for a machine with an NVIDIA GPU (e.g. a lent H100): run from the
# repository root of a copy of the working tree. Needs python3 with torch (CUDA build), numpy, onnx, onnxruntime,
# pytest, cmake and nvcc; no network and no TensorRT runtime needed (the plugin's enqueue step needs TensorRT's
# headers: TENSORRT_INCLUDE_DIR, below; without it that step fails and says so). Builds only the CUDA kernel (own
# build dir, no ONNX Runtime headers), runs tests/test_cuda_kernel.py and the GPU tests of tests/test_torch_op.py, then
# `python -m export bench --device cuda` (op level, then model level), and writes every log and report to $OUT
# (if set) or ./gpu_checks_logs. Parity runs before timing; the benchmark also checks every result it times.
#   FF_CUDA_ARCHITECTURES (default 90), PYTHON (default python3), BUILD_DIR (default /tmp/ff-gpu-checks-build),
#   TENSORRT_INCLUDE_DIR (TensorRT's headers, for the plugin's enqueue through the harness)
#   BASELINE_SOURCES: a folder holding an earlier commit's plugins/ (here: git archive COMMIT plugins | tar -x -C
#     DIR; carried, as the machine gets no .git): its kernel is built and timed at B=4,H=8,N=1024,D=64 too (A/B of a
#     tuning step, plugins/cuda/ROOFLINE.md); its C API must match plugins/cuda/fourier_attention_cuda.h.
# Every step runs even if an earlier one failed; the exit status is non-zero if any step failed.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export FF_CUDA_ARCHITECTURES="${FF_CUDA_ARCHITECTURES:-90}"
BUILD_DIR="${BUILD_DIR:-/tmp/ff-gpu-checks-build}"
LOGS="${OUT:-$PWD/gpu_checks_logs}"
mkdir -p "$LOGS"
SUMMARY="$LOGS/summary.txt"
: > "$SUMMARY"
FAILED=0

say() { echo "$*" | tee -a "$SUMMARY"; }
# step NAME COMMAND...: run, log to $LOGS/NAME.log (then shown), record the status.
step() {
  local name="$1"; shift
  echo "=== $name: $*" | tee -a "$SUMMARY"
  local start=$SECONDS
  "$@" > "$LOGS/$name.log" 2>&1  # not a pipeline: the step runs in this shell (it may set variables)
  local rc=$?
  cat "$LOGS/$name.log"
  if [ "$rc" -eq 0 ]; then say "--- $name: OK ($((SECONDS - start)) s)"; else say "--- $name: FAILED (exit $rc, $((SECONDS - start)) s; log $LOGS/$name.log)"; FAILED=1; fi
  return "$rc"
}

gpu_info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv &&
    nvidia-smi -L && nvcc --version | tail -2 &&
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
}

tensorrt_info() {
  local py lib
  if py=$("$PYTHON" -c "import tensorrt; print(tensorrt.__version__)" 2>/dev/null); then py="python tensorrt $py"; else py="no python tensorrt"; fi
  if lib=$(ldconfig -p 2>/dev/null | grep -o 'libnvinfer[^ ]*' | sort -u | tr '\n' ' '); [ -n "$lib" ]; then lib="libnvinfer: $lib"; else lib="no libnvinfer in ldconfig"; fi
  echo "TensorRT on this machine: $py; $lib"
}

# cuda_library SOURCES BUILD [TARGET...]: configure the plugins in SOURCES for the CUDA kernel only, build TARGETs
cuda_library() {
  local src="$1" build="$2"; shift 2
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFF_BUILD_ONNXRUNTIME=OFF -DFF_BUILD_TENSORRT=OFF \
    -DFF_BUILD_CUDA=ON -DFF_CUDA_ARCHITECTURES="$FF_CUDA_ARCHITECTURES" &&
    cmake --build "$build" --target "$@" --parallel "$(nproc)"
}

build_cuda() {
  cuda_library plugins "$BUILD_DIR" fourierformer_cuda_shared fourierformer_cuda &&
    test -f "$BUILD_DIR/libfourierformer_cuda.so" &&
    nm -D --defined-only "$BUILD_DIR/libfourierformer_cuda.so"
}

ptxas_report() {  # registers / spills / shared memory per kernel instance, for the record
  nvcc -O3 -arch="sm_${FF_CUDA_ARCHITECTURES%%[;-]*}" -Iplugins/common -Iplugins/cuda -Xptxas -v -c \
    plugins/cuda/fourier_attention_cuda.cu -o /dev/null
}

# The test imports conftest.py, which needs polygraphy (and onnx_graphsurgeon), and the command line needs
# platformdirs: pure-Python packages that a machine without network may lack. Missing ones are taken from a carried .venv (symlinked, nothing installed).
EXTRA_PYTHONPATH=""
python_deps() {
  local missing=0 mod src
  mkdir -p "$BUILD_DIR/pypath"
  for mod in torch numpy onnx onnxruntime pytest hypothesis polygraphy onnx_graphsurgeon platformdirs; do
    if "$PYTHON" -c "import $mod" 2>/dev/null; then echo "python module $mod: ok"; continue; fi
    src=$(ls -d .venv/lib/python3*/site-packages/"$mod" 2>/dev/null | head -1)
    if [ -n "$src" ] && case "$mod" in polygraphy|onnx_graphsurgeon|platformdirs) true;; *) false;; esac; then
      ln -sfn "$PWD/$src" "$BUILD_DIR/pypath/$mod"
      EXTRA_PYTHONPATH="$BUILD_DIR/pypath"
      echo "python module $mod: missing, using $src"
    else
      echo "python module $mod: MISSING"; missing=1
    fi
  done
  return "$missing"
}

# The plugin's enqueue, through the C++ harness. TensorRT's headers need network to fetch, so the machine gets
# them carried: TENSORRT_INCLUDE_DIR (e.g. build/plugins/_deps/tensorrt-headers/kernel_lens/include/tensorrt).
harness_enqueue() {
  [ -n "${TENSORRT_INCLUDE_DIR:-}" ] || { echo "TENSORRT_INCLUDE_DIR is not set: cannot build the plugin"; return 1; }
  cmake -S plugins -B "$BUILD_DIR" -DFF_BUILD_TENSORRT=ON -DTENSORRT_INCLUDE_DIR="$TENSORRT_INCLUDE_DIR" &&
    cmake --build "$BUILD_DIR" --target fourier_attention_plugin_harness --parallel "$(nproc)" &&
    "$BUILD_DIR/fourier_attention_plugin_harness" "$BUILD_DIR/libfourierformer_trt.so" --enqueue &&
    "$BUILD_DIR/fourier_attention_plugin_harness" "$BUILD_DIR/libfourierformer_trt.so" --enqueue \
      --field causal:INT32=1 --field power:INT32=8 --field R:FLOAT32=0.5
}

# python with the prebuilt kernel library ($KERNEL_BUILD, default $BUILD_DIR) and any pure-Python packages taken
# from the carried .venv
py() {
  FOURIERFORMER_CUDA_LIBRARY="${KERNEL_BUILD:-$BUILD_DIR}/libfourierformer_cuda.so" \
    PYTHONPATH="$PWD${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$@"
}

run_tests() {  # the emulator cases need their own library: only the GPU cases run here
  py -m pytest -v -rs -p no:cacheprovider tests/test_cuda_kernel.py tests/test_torch_op.py -k "(gpu or cuda) and not emulat" \
    --junitxml="$LOGS/test_cuda_kernel.xml"
}

bench_ops() {  # the target shape B=4,H=8,N=1024,D=64, an N sweep, a D sweep and the paper's models' attention
  # (lm-small 1,8,256,16, lm-medium 1,8,384,32, deit-tiny 1,3,197,64), causal and not
  py -m export bench --device cuda --causal --repeats 20 --warmup 3 --out "$LOGS/bench-cuda" --sizes \
    4,8,256,64 4,8,1024,64 4,8,4096,64 4,8,16384,64 4,8,1024,16 4,8,1024,32 4,8,1024,128 \
    1,8,256,16 1,8,384,32 1,3,197,64
}

bench_baseline() {  # the earlier kernel through the same Python and benchmark code
  cuda_library "$BASELINE_SOURCES/plugins" "$BUILD_DIR-baseline" fourierformer_cuda_shared &&
    KERNEL_BUILD="$BUILD_DIR-baseline" py -m export bench --device cuda --repeats 20 --warmup 3 \
      --out "$LOGS/bench-cuda-baseline" --sizes 4,8,1024,64
}

bench_models() {
  py -m export bench --device cuda --models --repeats 10 --warmup 2 --out "$LOGS/bench-cuda-models"
}

step gpu_info gpu_info
step tensorrt tensorrt_info
step python_deps python_deps
step build_cuda build_cuda
step ptxas ptxas_report
if [ -f "$BUILD_DIR/libfourierformer_cuda.so" ]; then
  step test_cuda_kernel run_tests
else
  say "--- test_cuda_kernel: SKIPPED (the library was not built)"; FAILED=1
fi
step harness_enqueue harness_enqueue
if [ -f "$BUILD_DIR/libfourierformer_cuda.so" ]; then
  step bench_ops bench_ops
  if [ -n "${BASELINE_SOURCES:-}" ]; then step bench_baseline bench_baseline; fi
  step bench_models bench_models
fi
echo "=== summary" | tee -a "$SUMMARY"
"$PYTHON" scripts/gpu_summary.py "$LOGS" | tee -a "$SUMMARY"
say "=== gpu_checks: $([ "$FAILED" -eq 0 ] && echo ALL OK || echo SOME STEP FAILED); logs in $LOGS"
exit "$FAILED"
