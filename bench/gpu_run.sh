#!/usr/bin/env bash
# The GPU checks of one short device session, in order of value; each part has its own time limit
# so a slow part cannot eat the others. Writes logs and JSON to $OUT (default bench/results/gpu).
#   tests:   the CUDA tests (tests marked skipif not cuda)
#   check:   bench/gpu_check.py: s/iter, peak memory, TFLOP/s, MFU, host-device syncs per step
#            (torch.cuda.set_sync_debug_mode, by source line) and a profiler table, for
#            DAFormer+CLUDA and HRDA+CLUDA in bf16
#   demo:    the demo (miniscapes_cluda, 1000 iterations) trained end to end on the GPU by the CLI
#   compile: gpu_check eager vs train.compile=true (torch.compile of the student's segmentor) for
#            both presets in bf16, with the profiler's kernel share, and compiled with CUDA graphs
#            (train.compile_mode=reduce-overhead) (issue #18 item 3; run this part alone)
# Usage: bench/gpu_run.sh [PART ...]   (default: all four, in that order)
# Needs cityscapesscripts / pypng wheels in .whl/ where the machine lacks them (bench/README.md).
set -u
OUT=${OUT:-bench/results/gpu}
PARTS=${*:-tests check demo compile}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
CHECK="python3 bench/gpu_check.py --presets gta2cs_daformer_cluda gta2cs_hrda_cluda --ckpt off"
for part in $PARTS; do
  echo "== $part"
  case $part in
    tests) timeout 90 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_contrastive.py 2>&1 | tail -5 ;;
    check) timeout 150 $CHECK --amps bf16 --warmup 2 --iters 5 --profile --out "$OUT/gpu_check.json" 2>&1 \
             | grep -v -i "warn" | tee "$OUT/gpu_check.log" ;;
    demo) timeout 150 python3 -m cluda_kit train miniscapes_cluda --out /tmp/demo_gpu \
            --set train.device=cuda --set train.threads=4 --set data.num_workers=4 2>&1 \
            | tr '\r' '\n' | grep -v -E "^\s*$" | tail -45 | tee "$OUT/demo_gpu.log"
          cp /tmp/demo_gpu/metrics.jsonl "$OUT/demo_gpu_metrics.jsonl" 2>/dev/null ;;
    compile) timeout 540 $CHECK --amps bf16 --compile off on cudagraphs --profile \
               --warmup 2 --iters 5 --out "$OUT/gpu_check_compile.json" 2>&1 \
               | grep -v -i "warn" | tee "$OUT/gpu_check_compile.log" ;;
    *) echo "unknown part $part (tests | check | demo | compile)"; exit 2 ;;
  esac
done
