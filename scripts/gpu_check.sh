#!/usr/bin/env bash
# make gpu-check: fastddpm's check on a bare GPU machine (its own torch/triton, no network, no
# bootstrap). Every result file goes into $OUT (default gpu-results/). Each part is time-boxed so
# one hang does not eat the ~8 minute budget. `--dry-run`: syntax and the Python parts at tiny
# sizes on the CPU under TRITON_INTERPRET=1 (no GPU numbers). diffusers is not on the image: put
# its wheel in .whl/ (docs/triton.md says how); without it the diffusers rows are skipped.
set -u
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"; T0=$SECONDS; PY=${PY:-python3}
lap() { echo "=== $* [$((SECONDS - T0)) s]"; }
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/tcache}
{
lap setup
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
if [ $DRY = 1 ]; then
  export TRITON_INTERPRET=1
  lap "dry run: kernel bench + e2e smoke (CPU, interpreter)"
  timeout 300 $PY bench/triton_kernels.py --device cpu --min-log2 4 --max-log2 4 --warmup 1 --reps 1 \
    --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1; echo "kernels rc=$?"
  timeout 300 $PY bench/gpu_e2e.py --smoke --out "$OUT" --sections correctness > "$OUT/e2e.log" 2>&1; echo "e2e rc=$?"
  lap done; exit 0
fi
unset TRITON_INTERPRET
timeout 120 $PY -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1; echo "install rc=$?"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import sys,torch,triton,numpy;print(sys.version.split()[0],torch.__version__,torch.version.cuda,triton.__version__,numpy.__version__)" | tee -a "$OUT/gpu.txt"
lap "pytest -m triton (compiled on the GPU)"
timeout 240 $PY -m pytest -m triton tests -q -rfE -p no:cacheprovider --junitxml="$OUT/junit.xml" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"; tail -30 "$OUT/pytest.log"
lap "kernel benchmark (L2 flushed, fp32 + bf16)"
timeout 120 $PY bench/triton_kernels.py --min-log2 20 --max-log2 26 --reps 10 --json "$OUT/kernels.json" > "$OUT/kernels.md" 2>&1
echo "kernels rc=$?"; cat "$OUT/kernels.md"
lap "end-to-end (graph vs eager vs diffusers vs torch loop)"
timeout $((460 - SECONDS + T0 > 60 ? 460 - SECONDS + T0 : 60)) $PY bench/gpu_e2e.py --out "$OUT" > "$OUT/e2e.log" 2>&1
echo "e2e rc=$?"; tail -40 "$OUT/e2e.log"
lap done
} 2>&1 | tee "$OUT/run.log"
