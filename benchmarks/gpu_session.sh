#!/usr/bin/env bash
# A lent GPU's work in a few calls (each call of the device tool starts on a bare machine and runs <= 10 minutes).
#
#   bash benchmarks/gpu_session.sh bench              # CUDA-only tests + python -m benchmarks.run gpu (~8 min)
#   bash benchmarks/gpu_session.sh train MINUTES      # configs/maze-small-gpu.yaml for MINUTES, then the follow
#                                                     #   benchmark and an exported copy of the EMA weights
#
# `train` resumes the run packed in $CARRY/run.tar (the previous call's $OUT/run.tar.part-*, copied into $CARRY)
# and trains from scratch when there is none; the data is $CARRY/data (lssvwm data maze --episodes 256 --steps 400
# --resolution 32 --mazes 4 --seed 0), generated there when missing. Wheels of packages the machine lacks
# (gymnasium, fla-core) go in .whl/. The device tool brings back at most 8 files from $OUT (./gpu_out without it):
# results.tar (logs, benchmark JSON, follow results and pictures, the exported EMA weights) and the run (what
# --resume needs) split in 15 MB parts. Knobs for a dry run on a CPU: PY (python), SET (more train --set values),
# FOLLOW (more eval follow arguments), e.g.
#   PY=.venv/bin/python SET="train.compile=false train.batch_size=2" FOLLOW="--windows 1 --long 48" \
#       bash benchmarks/gpu_session.sh train 0.2
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
CARRY=${CARRY:-.gpu}
RES=/tmp/gpu_results
PY=${PY:-python3}
rm -rf "$RES" && mkdir -p "$OUT" "$CARRY" "$RES"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv 2>&1 | tee "$RES/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$RES/gpu.txt"

case "${1:-}" in
bench)
    timeout 150 $PY -m pytest -q -p no:cacheprovider -rs \
        "tests/test_world_model.py::test_flex_attention_on_cuda_matches_with_gradients" \
        tests/test_ssm.py::test_fla_kernel_matches_torch_path tests/test_ssm.py::test_fla_layer_on_cuda \
        2>&1 | tee "$RES/cuda_tests.log" | tail -n 15
    timeout $(( 560 - $(elapsed) )) $PY -m benchmarks.run gpu 2>&1 | tee "$RES/bench_gpu.log"
    cp benchmarks/results/gpu*.json "$RES/" 2>/dev/null
    ;;
train)
    minutes=${2:?minutes of training}
    run=runs/maze-small-gpu
    if [ ! -f "$CARRY/data/meta.json" ]; then
        $PY -m lssvwm.cli data maze --episodes 256 --steps 400 --resolution 32 --mazes 4 --seed 0 \
            --out "$CARRY/data" 2>&1 | tail -n 2
    fi
    resume=()
    if compgen -G "$CARRY/run.tar*" >/dev/null; then
        mkdir -p runs && cat "$CARRY"/run.tar* | tar xf - -C runs && resume=(--resume)
        echo "resuming $run at $(cat $run/checkpoints/latest 2>/dev/null)"
    fi
    $PY -m lssvwm.cli train --config configs/maze-small-gpu.yaml --data "$CARRY/data" --out $run "${resume[@]}" \
        --no-progress --set train.max_minutes="$minutes" ${SET:-} 2>&1 | tee "$RES/train.log" | grep -v "^step" | tail -n 20
    cp $run/log.jsonl "$RES/log.jsonl"
    $PY -m lssvwm.cli eval follow --ckpt $run --data "$CARRY/data" --long 200 --out "$RES/follow" ${FOLLOW:-} 2>&1 \
        | tee "$RES/follow.log" | tail -n 30
    $PY -m lssvwm.cli model export --ckpt $run --out /tmp/export >/dev/null && tar cf "$RES/export.tar" -C /tmp export
    # the run (weights, EMA, optimizer: what --resume needs), the last checkpoint only, in parts under 16 MB
    keep=$(cat $run/checkpoints/latest)
    find $run/checkpoints -mindepth 1 -maxdepth 1 -name "step_*" ! -name "$keep" -exec rm -rf {} +
    tar cf - -C runs "$(basename $run)" | split -b 15m - "$OUT/run.tar.part-"
    ;;
*)
    sed -n 2,12p "$0"; exit 2
    ;;
esac
tar cf "$OUT/results.tar" --exclude="windows_*" -C "$RES" .
ls -la "$OUT"
echo "gpu_session $1: $(elapsed) s"
