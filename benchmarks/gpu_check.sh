#!/usr/bin/env bash
# GPU check: the paths only a GPU can verify, in one short script (about 3 minutes), with a
# table printed last. Record its numbers in docs/benchmarks.md and docs/distributed.md.
#
#   bash benchmarks/gpu_check.sh prepare   # here (with internet to PyPI): builds build/gpu_wheels
#   bash benchmarks/gpu_check.sh           # on the GPU machine, from the repository root, with
#                                          # build/gpu_wheels carried along
#
# The GPU image has its own Python and torch but not every dependency, and no internet: the
# ganforge wheel (so its entry points are installed: the built-ins are found through them) and
# any missing dependency are installed from build/gpu_wheels with --no-deps, against the
# machine's torch. GPU_CHECK_ALLOW_CPU=1 runs the same script on a CPU (tiny, for testing it).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=$ROOT/build/gpu_wheels
source_hash() {  # the sources the wheel is built from, to catch a stale build/gpu_wheels
    cat $(find ganforge plugins -name '*.py' | sort) pyproject.toml | sha256sum | cut -c1-16
}

if [[ "${1:-}" == "prepare" ]]; then
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    python -m pip wheel -q --no-deps . -w "$WHEELS"
    # What the image may lack (installed there only when missing), for its Python 3.12.
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        -d "$WHEELS" scikit-learn scipy joblib threadpoolctl pillow \
        hjson py-cpuinfo msgpack einops ninja pydantic pydantic-core annotated-types \
        typing-inspection
    # DeepSpeed (the DeepSpeed rows): pure Python, built here from its sdist.
    python -m pip wheel -q --no-deps deepspeed==0.19.8 -w "$WHEELS"
    # The plain loop the speed rows compare against (../shared does not travel to the GPU).
    cp /work/shared/baselines/gan_step_bench.py "$WHEELS/"
    source_hash > "$WHEELS/SOURCE_HASH"
    du -sh "$WHEELS"
    exit 0
fi

PY=${PYTHON:-python3}  # the image's own interpreter, with its torch
OUT=${OUT:-$ROOT/build/gpu_check}
if [[ "$(cat "$WHEELS/SOURCE_HASH" 2>/dev/null)" != "$(source_hash)" ]]; then
    echo "gpu_check: build/gpu_wheels is missing or older than the sources: run prepare"; exit 1
fi
SITE=$ROOT/build/gpu_site
rm -rf "$OUT" "$SITE" && mkdir -p "$OUT" "$SITE"
"$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/ganforge-*.whl
for spec in sklearn:scikit_learn scipy:scipy joblib:joblib threadpoolctl:threadpoolctl PIL:pillow \
        hjson:hjson cpuinfo:py_cpuinfo msgpack:msgpack einops:einops ninja:ninja \
        annotated_types:annotated_types typing_inspection:typing_inspection \
        pydantic_core:pydantic_core pydantic:pydantic deepspeed:deepspeed; do
    module=${spec%%:*} wheel=${spec##*:}
    if ! "$PY" -c "import $module" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/"$wheel"-*.whl
    fi
done
export PYTHONPATH=$SITE
cd "$OUT"  # run the installed wheel, not the source tree

CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
if [[ "$CUDA" != 1 && "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]]; then
    echo "gpu_check: no CUDA device (set GPU_CHECK_ALLOW_CPU=1 to dry-run on a CPU)"; exit 1
fi
"$PY" - <<'EOF' | tee "$OUT/device.txt"
import accelerate, torch, ganforge
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)"
print(f"device: {name}; torch {torch.__version__}; accelerate {accelerate.__version__}; "
      f"ganforge {ganforge.__version__}")
EOF
if [[ "$CUDA" == 1 ]]; then QS_STEPS=400 WG_STEPS=150 EXTRA=(); else
    QS_STEPS=6 WG_STEPS=3
    EXTRA=(generator.width=8 discriminator.width=8 train.batch_size=16 data.resolution=32)
fi
CONFIG=$ROOT/configs/accelerate/one_gpu.yaml
status=()

run() {  # run NAME TIMEOUT COMMAND...: record its exit status and wall time
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    status+=("$name $rc $((SECONDS - start))")
    [[ $rc == 0 ]] || { echo "--- $name failed (exit $rc):"; tail -20 "$OUT/$name.log"; }
}

train() {  # train NAME PRECISION RECIPE OVERRIDES... (one process, configs/accelerate/one_gpu.yaml)
    train_with "$1" "--config_file $CONFIG" "${@:2}"
}

train_with() {  # train_with NAME "LAUNCHER ARGS" PRECISION RECIPE OVERRIDES...
    local name=$1 launcher=$2 precision=$3 recipe=$4; shift 4
    # shellcheck disable=SC2086  # the launcher's arguments are words
    run "$name" 150 "$PY" -m accelerate.commands.launch $launcher --mixed_precision "$precision" \
        -m ganforge "$ROOT/recipes/$recipe" "run.out_dir=$OUT/$name" train.log_every=50 \
        train.checkpoint_every=0 "$@" "${EXTRA[@]}"
}

train quickstart_bf16 bf16 quickstart.toml "train.steps=$QS_STEPS"
train quickstart_fp16 fp16 quickstart.toml "train.steps=$QS_STEPS"
train wgan_gp_bf16 bf16 wgan_gp.toml data.name=synthetic "train.steps=$WG_STEPS"
train wgan_gp_fp16 fp16 wgan_gp.toml data.name=synthetic "train.steps=$WG_STEPS"
# Resume on the GPU: a copy of the bf16 quickstart extended by 100 steps from its checkpoint.
cp -r "$OUT/quickstart_bf16" "$OUT/quickstart_bf16_resumed"
train quickstart_bf16_resumed bf16 quickstart.toml "train.steps=$((QS_STEPS + 100))"
DEVICE=$([[ $CUDA == 1 ]] && echo cuda || echo cpu)
run generate_cuda 60 "$PY" -m ganforge generate "$OUT/quickstart_bf16/generator.safetensors" \
    --num 64 --out "$OUT/generated.png" --device "$DEVICE"
# Evaluation on the device: twice (the second reads the cached real features), and during
# training (digits extractor, gathered features).
for pass in 1 2; do
    run "eval_cuda_$pass" 120 "$PY" -m ganforge eval "$OUT/quickstart_bf16/generator.safetensors" \
        --data digits --num 500 --device "$DEVICE" --out "$OUT/eval_$pass.json"
done
train quickstart_eval bf16 quickstart.toml train.steps=200 eval.every=100 eval.num=500
# Speed: ganforge's DCGAN-64 (synthetic data: the input path included) against the plain loop
# (random data already on the GPU) in the same run, batches 128 and 512, bf16.
if [[ "$CUDA" == 1 ]]; then SPEED_STEPS=600 SPEED_BATCHES="128 512" BENCH=(--steps 30); else
    SPEED_STEPS=4 SPEED_BATCHES="16" BENCH=(--steps 1 --warmup 1); fi
run plain_bench 300 "$PY" "$WHEELS/gan_step_bench.py" --device "$DEVICE" --algos dcgan \
    --variants fp32,bf16_cl,bf16_cl_cg --batches "${SPEED_BATCHES// /,}" "${BENCH[@]}" \
    --out "$OUT/plain_bench.jsonl"
for batch in $SPEED_BATCHES; do
    for layout in nchw cl; do
        flag=$([[ $layout == cl ]] && echo true || echo false)
        train "dcgan64_b${batch}_bf16_$layout" bf16 dcgan.toml data.name=synthetic data.size=8192 \
            "train.batch_size=$batch" "train.channels_last=$flag" "train.steps=$SPEED_STEPS" \
            train.log_every=100 train.sample_every=100000
    done
done
# The same DCGAN-64 step under DeepSpeed ZeRO-2 and FSDP2 (bf16 autocast, one process: the
# backends' own overhead beside DDP's rows above; several GPUs need a bigger machine).
for batch in $SPEED_BATCHES; do
    for backend in zero2 fsdp2; do
        if [[ $backend == zero2 ]]; then launcher="--use_deepspeed --zero_stage 2 --num_processes 1"
        else launcher="--config_file $ROOT/configs/accelerate/fsdp.yaml --num_processes 1"; fi
        train_with "dcgan64_b${batch}_bf16_$backend" "$launcher" bf16 dcgan.toml \
            data.name=synthetic data.size=8192 "train.batch_size=$batch" \
            "train.steps=$SPEED_STEPS" train.log_every=100 train.sample_every=100000
    done
done
run input_pipeline 120 "$PY" "$ROOT/benchmarks/input_pipeline.py" --seconds 1
# fp16 with its loss scaler, every loss and regularizer (skips itself without CUDA).
run fp16_every_loss 200 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
    "$ROOT/tests/test_precision.py" --rootdir "$ROOT"

"$PY" - "$OUT" "${status[@]}" <<'EOF'
import json, sys
from pathlib import Path

out, rows = Path(sys.argv[1]), [r.split() for r in sys.argv[2:]]
print()
print((out / "device.txt").read_text().strip())
print(f"| check | exit | wall s | steps | real img/s (last log) | skipped | d_loss | g_loss |")
print("|---|---|---|---|---|---|---|---|")
for name, rc, wall in rows:
    metrics = out / name / "metrics.jsonl"
    cells = ["", "", "", "", ""]
    if metrics.exists():
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        last = [r for r in records if "images_per_s" in r][-1]
        cells = [str(last["step"]), f"{last['images_per_s']:.0f}", str(last["skipped_steps"]),
                 f"{last['d_loss']:.3f}", f"{last['g_loss']:.3f}"]
        evaluated = [r for r in records if "eval/fd" in r]
        if evaluated:
            cells[0] += f" (eval/fd {evaluated[-1]['eval/fd']:.1f})"
    if name.endswith("_resumed"):
        resumed = "resumed from" in (out / f"{name}.log").read_text()
        cells[0] += " (resumed)" if resumed else " (NOT resumed)"
    if name.startswith("eval_cuda") and (out / f"eval_{name[-1]}.json").exists():
        scores = json.loads((out / f"eval_{name[-1]}.json").read_text())["metrics"]["generated"]
        cells[0] = f"digits-FD {scores['fd']:.2f}, IS {scores['is']:.2f}"
    if name == "fp16_every_loss":
        log = (out / f"{name}.log").read_text().strip().splitlines()
        cells[0] = log[-1] if log else ""
    print(f"| {name} | {rc} | {wall} | " + " | ".join(cells) + " |")
pipeline = out / "input_pipeline.log"
if pipeline.exists():
    print()
    print("\n".join(l for l in pipeline.read_text().splitlines() if l.startswith("|")))
bench = out / "plain_bench.jsonl"
if bench.exists():
    print()
    print("| plain loop (gan_step_bench.py), DCGAN-64 | batch | real img/s |")
    print("|---|---|---|")
    for line in bench.read_text().splitlines():
        r = json.loads(line)
        speed = f"{r['real_img_per_s']:.0f}" if "real_img_per_s" in r else r.get("error", "")[:80]
        print(f"| {r['variant']} | {r['batch']} | {speed} |")
EOF
