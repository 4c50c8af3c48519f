#!/usr/bin/env bash
# budget.yaml's GPU shapes trials (HG*) at once on one CUDA GPU (each its own process: the tiny ViT
# leaves the GPU idle, the host's cores set the pace):
#   bash experiments/recipe_search/gpu_sweep.sh OUT_DIR [TRAIN_LIMIT_S]
# Generates the two shapes roots the trials read (32 and 64 px, 2,000 + 1,000 images, seed 0; the
# same files as on any machine: index.json's sha256 is logged), runs each trial's trajectory.py for
# at most TRAIN_LIMIT_S seconds (default 450; SIGINT after that leaves budget/<trial>.jsonl.tmp with
# the measurements so far) and packs the trajectories and logs into OUT_DIR/sweep.tar.gz.
# GPU_SWEEP_TRIALS="NAME:UNTIL:EVERY ..." picks the trials (UNTIL empty: the whole schedule).
set -uo pipefail
out=$(realpath -m "${1:?usage: bash experiments/recipe_search/gpu_sweep.sh OUT_DIR [TRAIN_LIMIT_S]}")
limit=${2:-450}
cd "$(dirname "$0")/../.."
mkdir -p "$out/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
py=${PYTHON:-python3}
trials=${GPU_SWEEP_TRIALS:-"HG200:100:20 HG200b64::20 HG200b64s64p16::20 HG200b64s64p8::20 HG200b64K4k::20
  HG200b64mc6::20 HG400b128::40"}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  $py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"; echo "cpus $(nproc --all)"; } 2>&1 | tee "$out/logs/machine.txt"
for spec in "shapes_v3 32" "shapes_v3_64 64"; do
  set -- $spec
  $py -m pipelines.prepare --dataset shapes --root "data/prototypes/$1" --num-train 2000 --num-val 1000 \
    --image-size "$2" --workers 8 2>&1 | tail -1 | tee -a "$out/logs/prepare.txt"
done

t0=$SECONDS
for spec in $trials; do
  IFS=: read -r name until every <<<"$spec"
  timeout --signal=INT --kill-after=20 "$limit" $py -m experiments.recipe_search.trajectory --trial "$name" \
    --every "$every" ${until:+--until "$until"} >"$out/logs/$name.log" 2>&1 &
done
wait
echo "trials ended after $((SECONDS - t0)) s" | tee -a "$out/logs/machine.txt"
for spec in $trials; do
  IFS=: read -r name _ <<<"$spec"
  cp experiments/recipe_search/budget/"$name".*jsonl* "$out/logs/" 2>/dev/null
  tail -n 2 "$out/logs/$name.log"
done
tar -czf "$out/sweep.tar.gz" -C "$out" logs && rm -rf "$out/logs"
