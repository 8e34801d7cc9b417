#!/usr/bin/env bash
# The GPU check: everything to run the first time spmctl meets an NVIDIA GPU, in one go.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default: gpu_check_out/
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # any machine: the same steps on the CPU, tiny
#                                                      # sizes (checks the script, measures nothing)
#
# Steps (each under its own time limit, and all under an 8-minute budget: a step that would start
# with too little time left is skipped and recorded as failed):
#   1. build the fused kernel for this GPU (`spmctl doctor --build --json`), check it has CUDA kernels
#   2. pytest -m cuda (op and network tests on the GPU, the self-check, the launch fallback)
#   3. bench_membrane on CUDA in fp32, fp16, bf16 (kernel speed-ups over the eager composition)
#   4. bench_train on the SD-shaped random model at 512 px, fp16 and bf16 (s/it, peak memory)
#   5. bench_sample on the same model at 512 px, fp16 and bf16 (images/s, FT overhead)
# and prints one JSON summary (also OUT_DIR/summary.json). A failed step is recorded and the next one
# runs; the exit status is 1 if any step failed. Every step's full output is in OUT_DIR/<step>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-gpu_check_out}" && cd "${1:-gpu_check_out}" && pwd)
PY=${PYTHON:-python}
SPMCTL=$(dirname "$(command -v "$PY")")/spmctl
[ -x "$SPMCTL" ] || SPMCTL=spmctl
DRY=${GPU_CHECK_DRY_RUN:-0}
BUDGET=470  # seconds, all steps together (8 minutes less the summary)
SCALE=1     # the dry run's CPU steps are slower: their limits are scaled instead
if [ "$DRY" = 1 ]; then
  BUDGET=3600; SCALE=5
  DEV=cpu; TRAIN_DEV=cpu; MODEL=tiny; SIZE=64; ITERS=2; DTYPES="float32"; MEM_ARGS="--repeat 1 --ks 1"
  SAMPLE_ARGS="--prompts 2 --batch-size 2 --steps 2 --repeats 1 --runs 1"
else
  DEV=cuda; TRAIN_DEV=0; MODEL="$OUT/sd15-shaped"; SIZE=512; ITERS=20; DTYPES="float16 bfloat16"
  MEM_ARGS="--repeat 15"; SAMPLE_ARGS="--prompts 8 --batch-size 4 --steps 10 --repeats 3 --runs 1"
fi
FAILED=""

step() {  # step NAME LIMIT_S CMD...: run within min(LIMIT_S, budget left), log to $OUT/NAME.log
  local name=$1 limit=$(($2 * SCALE)) left=$((BUDGET - SECONDS))
  shift 2
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 5 ]; then
    echo "gpu_check: $name skipped: the time budget is spent" >&2
    FAILED="$FAILED $name"
    return
  fi
  local start=$SECONDS
  echo "gpu_check: $name ..." >&2
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "gpu_check: $name ok ($((SECONDS - start)) s)" >&2
  else
    echo "gpu_check: $name FAILED (exit $?, $((SECONDS - start)) s; see $OUT/$name.log)" >&2
    tail -n 5 "$OUT/$name.log" >&2
    FAILED="$FAILED $name"
  fi
}

# 1. the kernel, built for the GPU present (the doctor report goes into the summary)
step build 130 sh -c "'$SPMCTL' doctor --build --json > '$OUT/doctor.json'"
if [ "$DRY" != 1 ]; then
  step cuda_kernels 10 "$PY" -c "import json,sys; k=json.load(open('$OUT/doctor.json'))['kernel']; \
sys.exit(0 if k['cuda_kernels'] and all(v == 'passed' for v in k['self_check'].values()) else 1)"
fi

# 2. the CUDA tests (all skipped on a CPU machine)
step pytest_cuda 60 "$PY" -m pytest -q -m cuda -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml" \
  tests/test_membrane_op.py tests/test_membrane_network.py

# 3. kernel speed-ups
for dtype in float32 float16 bfloat16; do
  [ "$DRY" = 1 ] && [ "$dtype" != float32 ] && continue
  step "membrane_$dtype" 20 "$PY" benchmarks/bench_membrane.py --device "$DEV" --dtype "$dtype" $MEM_ARGS \
    --out "$OUT/membrane_$dtype.json"
done

# 4-5. training and sampling on the SD-shaped random model
if [ "$DRY" != 1 ]; then
  step sd15_shaped 60 sh -c "cd benchmarks && '$PY' -c \"import bench_sample as b; b.save_sd15_shaped('$OUT/sd15-shaped', device='cuda')\""
fi
for dtype in $DTYPES; do
  if [ "$dtype" = bfloat16 ] && ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_bf16_supported() else 1)"; then
    echo "gpu_check: no bf16 on this GPU, skipping bf16 training and sampling" >&2
    continue
  fi
  step "train_$dtype" 45 "$PY" benchmarks/bench_train.py --model "$MODEL" --resolution "$SIZE" \
    --iterations "$ITERS" --devices "$TRAIN_DEV" --precision "$dtype" --spmctl-only --out "$OUT/train_$dtype.json"
  step "sample_$dtype" 40 "$PY" benchmarks/bench_sample.py --model "$MODEL" --size "$SIZE" --device "$DEV" \
    --precision "$dtype" $SAMPLE_ARGS --out "$OUT/sample_$dtype.json"
done
rm -rf "$OUT/sd15-shaped"

"$PY" - "$OUT" "$FAILED" "$DRY" <<'EOF'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, failed, dry = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3] == "1"


def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


summary = {"dry_run": dry, "failed_steps": failed}
doctor = load("doctor.json")
if doctor:
    summary["torch"], summary["gpus"] = doctor["torch"], doctor["gpus"]
    summary["kernel"] = {k: doctor["kernel"][k] for k in ("backend", "cuda_kernels", "nvcc_arch_flags", "self_check")}
junit = out / "pytest_cuda.xml"
if junit.exists():
    suite = ET.parse(junit).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["pytest_cuda"] = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"]
                              - counts["skipped"]}
summary["membrane_speedup"] = {}
for dtype in ("float32", "float16", "bfloat16"):
    mem = load(f"membrane_{dtype}.json")
    if mem:  # the eager composition's time over the fused op's, per shape and K
        summary["membrane_speedup"][dtype] = {
            "x".join(map(str, r["shape"])) + f" K={r['K']}": {
                "fwd": round(r["membrane_fwd"]["speedup"], 2), "fwd_bwd": round(r["membrane_fwd_bwd"]["speedup"], 2)}
            for r in mem["rows"]}
for dtype in ("float32", "float16", "bfloat16"):
    train, sample = load(f"train_{dtype}.json"), load(f"sample_{dtype}.json")
    if train:
        summary.setdefault("train", {})[dtype] = {
            "seconds_per_iteration": round(train["spmctl"]["seconds_per_iteration"], 4),
            "peak_memory_gib": round(train["spmctl"]["peak_memory_bytes"] / 2**30, 2)}
    if sample:
        summary.setdefault("sample", {})[dtype] = {
            "images_per_second": {k: round(v, 3) for k, v in sample["images_per_second"].items()},
            "ft_overhead_vs_plain": round(sample["ft_overhead_vs_plain"], 4)}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
[ -z "$FAILED" ] || { echo "gpu_check: failed steps:$FAILED" >&2; exit 1; }
