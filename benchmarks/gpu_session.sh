#!/usr/bin/env bash
# A lent GPU's work in a few calls (each call of the device tool starts on a bare machine and runs <= 10 minutes).
#
#   bash benchmarks/gpu_session.sh bench              # CUDA-only tests + python -m benchmarks.run gpu (~8 min)
#   bash benchmarks/gpu_session.sh train MINUTES      # configs/maze-small-gpu.yaml for MINUTES, then the follow
#                                                     #   benchmark and an exported copy of the EMA weights
#   bash benchmarks/gpu_session.sh memory MINUTES     # the memory claim at GPU scale: maze-small-v3 fine-tuned on
#       look-around data in its 4 mazes (--spin-prob 1) for MINUTES, batch 32 x 48 frames, twice side by side: its
#       attention windows as shipped (4) and cut to 1 frame (whatever it keeps from beyond 2 frames then comes through
#       its scans); then eval memory (look-around, retrieval; 16 episodes) with the whole context, cut to each
#       model's attention reach and cut to 14 frames, and the heads' memory (eval horizon). CPU runs of this at 90
#       minutes: docs/results.md. Dry run: PY=.venv/bin/python SET="train.batch_size=2" EPISODES=8 EVAL_EPISODES=1
#   bash benchmarks/gpu_session.sh session MINUTES    # all in one call, for a lease of ~15 minutes: the quick
#       benchmark (benchmarks.run gpu-quick, eager steps, decoding, kernels), then configs/maze-small-gpu.yaml
#       as written (v-prediction, eager) and predicting the clean frame (model.prediction=x0, the demo's recipe
#       since 2026-12-07) side by side on the GPU for MINUTES each (train.fit_steps: each LR schedule ends with its
#       time; until 2026-12-07 the pair was eager and compiled), GPU load sampled every 5 s, then the CUDA-only
#       tests in the time left of LIMIT seconds
#       (default 520). It brings back both runs' last checkpoints without the optimizer (enough for eval follow,
#       model export and train.init, not for --resume) and their exports; score them on a CPU afterwards.
#
# `train` resumes the run packed in $CARRY/run.tar (the previous call's $OUT/run.tar.part-*, copied into $CARRY)
# and trains from scratch when there is none; the data is $CARRY/data (lssvwm data maze --episodes 256 --steps 400
# --resolution 32 --mazes 4 --seed 0), generated there when missing. Wheels of packages the machine lacks
# (gymnasium, fla-core) go in .whl/. The device tool brings back at most 8 files from $OUT (./gpu_out without it):
# results.tar (logs, benchmark JSON, follow results and pictures, the exported EMA weights) and the run (what
# --resume needs) split in 15 MB parts. Knobs for a dry run on a CPU: PY (python), SET (more train --set values),
# FOLLOW (more eval follow arguments), BENCH (session's benchmark: gpu-smoke on a CPU), e.g.
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
# the training data (generated here when $CARRY/data is missing) and the CUDA-only tests within SECONDS
ensure_data() {
    [ -f "$CARRY/data/meta.json" ] || $PY -m lssvwm.cli data maze --episodes 256 --steps 400 --resolution 32 \
        --mazes 4 --seed 0 --out "$CARRY/data" 2>&1 | tail -n 2
}
cuda_tests() {
    timeout "$1" $PY -m pytest -q -p no:cacheprovider -rs \
        "tests/test_world_model.py::test_flex_attention_on_cuda_matches_with_gradients" \
        tests/test_ssm.py::test_fla_kernel_matches_torch_path tests/test_ssm.py::test_fla_layer_on_cuda \
        2>&1 | tee "$RES/cuda_tests.log" | tail -n 15
}
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv 2>&1 | tee "$RES/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$RES/gpu.txt"

case "${1:-}" in
bench)
    cuda_tests 150
    timeout $(( 560 - $(elapsed) )) $PY -m benchmarks.run gpu 2>&1 | tee "$RES/bench_gpu.log"
    cp benchmarks/results/gpu*.json "$RES/" 2>/dev/null
    ;;
train)
    minutes=${2:?minutes of training}
    run=runs/maze-small-gpu
    ensure_data
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
session)
    minutes=${2:?minutes of training}
    limit=${LIMIT:-520}
    timeout 100 $PY -m benchmarks.run ${BENCH:-gpu-quick} 2>&1 | tee "$RES/bench.log"
    cp benchmarks/results/gpu*.json "$RES/" 2>/dev/null
    ensure_data
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm --format=csv -l 5 >"$RES/load.csv" 2>&1 &
    smi=$!
    pids=()
    for mode in v x0; do
        $PY -m lssvwm.cli train --config configs/maze-small-gpu.yaml --data "$CARRY/data" \
            --out runs/maze-small-gpu-$mode --no-progress --set train.max_minutes="$minutes" train.fit_steps=true \
            train.compile=false train.num_workers=3 model.prediction=$mode ${SET:-} >"$RES/train_$mode.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    kill $smi 2>/dev/null
    echo "trained at $(elapsed) s"
    for mode in v x0; do
        run=runs/maze-small-gpu-$mode
        grep -v "^step" "$RES/train_$mode.log" | tail -n 8
        [ -f $run/checkpoints/latest ] || continue
        cp $run/log.jsonl "$RES/log_$mode.jsonl"
        $PY -m lssvwm.cli model export --ckpt $run --out /tmp/export/$mode >/dev/null
        keep=$(cat $run/checkpoints/latest)
        n=$(basename $run)
        tar cf - -C runs --exclude=state.pt $n/config.yaml $n/log.jsonl $n/checkpoints/latest $n/checkpoints/$keep \
            | split -b 15m - "$OUT/$mode.tar.part-"
    done
    [ -d /tmp/export ] && tar cf "$RES/export.tar" -C /tmp export
    left=$(( limit - $(elapsed) - 15 ))
    if [ $left -gt 20 ]; then
        cuda_tests $left
    fi
    ;;
memory)
    minutes=${2:?minutes of training}
    look="$CARRY/look"
    [ -f "$look/meta.json" ] || $PY -m lssvwm.cli data maze --episodes "${EPISODES:-256}" --steps 400 --resolution 32 \
        --mazes 4 --seed 0 --spin-prob 1 --spin-turns 3 --out "$look" 2>&1 | tail -n 2
    pids=()
    for w in 4 1; do
        layers="[{ssm: full, attn: $w}, {ssm: [4, 4], attn: $w}, {ssm: full, attn: $w}, {ssm: [2, 2], attn: $w}]"
        $PY -m lssvwm.cli train --config configs/maze-small-v3.yaml --data "$look" --out runs/look-w$w --no-progress \
            --set train.init=maze-small-v3 train.clip_len=48 train.batch_size=32 train.lr=2e-3 train.warmup=100 \
            train.max_minutes="$minutes" train.fit_steps=true train.ckpt_every=500 "model.layers=$layers" ${SET:-} \
            >"$RES/train_w$w.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    echo "trained at $(elapsed) s"
    for w in 4 1; do
        run=runs/look-w$w
        grep -v "^step" "$RES/train_w$w.log" | tail -n 4
        [ -f $run/checkpoints/latest ] || continue
        cp $run/log.jsonl "$RES/log_w$w.jsonl"
        for task in "look-around 32 24" "retrieval 48 48"; do
            read -r name ctx gen <<<"$task"
            for cut in whole reach 14; do
                limit=(); [ $cut = whole ] || limit=(--context-limit $cut)
                $PY -m lssvwm.cli eval memory --ckpt $run --task $name --context $ctx --frames $gen --seed 0 \
                    --episodes "${EVAL_EPISODES:-16}" --data "$look" "${limit[@]}" --out "$RES/memory_w$w/${name}_$cut" \
                    2>&1 | grep -v "it/s" | tail -n 6
                [ $cut = whole ] || rm -f "$RES/memory_w$w/${name}_$cut/grid.mp4"  # one video each: 16 MiB a file
            done
        done
        $PY -m lssvwm.cli eval horizon --ckpt $run --data "$look" 2>&1 | tail -n 3 | tee "$RES/horizon_w$w.txt"
        $PY -m lssvwm.cli model export --ckpt $run --out /tmp/export/look-w$w >/dev/null
    done
    [ -d /tmp/export ] && tar cf "$OUT/export.tar" -C /tmp export  # beside results.tar (16 MiB a file)
    ;;
*)
    sed -n 2,28p "$0"; exit 2
    ;;
esac
tar cf "$OUT/results.tar" --exclude="windows_*" -C "$RES" .
ls -la "$OUT"
echo "gpu_session $1: $(elapsed) s"
