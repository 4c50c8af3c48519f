#!/usr/bin/env bash
# The GPU checks in one prepared script, for any machine with one CUDA GPU (docs/performance.md):
#   bash ci/gpu_check.sh OUT_DIR [FASHION_MNIST_ROOT]
# 1. tests: the CUDA cases of tests/test_precision.py (bf16 vs fp32 loss curve, the official-style
#    fp16 + GradScaler step doing our work, fused SDPA == explicit attention for ViT-S/16);
# 2. bench: vit-s16 (ViT-S/16, 2 x 224 + 10 x 96 crops, batch 64, K 65536) and cpu-toy, ours in
#    bf16 against the official-style step (explicit attention, fp16 + GradScaler, python loops),
#    separately and in alternating pairs; k-NN 50,000 x 1,000,000 (dim 384);
# 3. learn: a smoke run of training, the default profile (the learning budget) on Fashion-MNIST
#    (200 epochs, 12,400 steps, bf16),
#    trained and evaluated as a grid cell (k-NN, linear probe, collapse metrics, attention);
# 4. ddp: the same entry point under torchrun (NCCL, SyncBatchNorm in the head), 2 epochs;
# 5. compile: torch.compile'd student and teacher on vit-s16 (compile time reported apart);
# 6. cells: N = 1, 2, 4, ... learning-budget cells (the default profile) training at once on the GPU
#    (python -m pipelines.launch.sharing): the N that launch.yaml's cells_per_gpu: auto would take,
#    cells per hour on one GPU and the projected wall time of the grid; cells.json plain,
#    cells_compile.json with train.compile=true (fewer kernel launches per step).
# Every part has its own time limit, all of them together GPU_CHECK_BUDGET_S (default 1500 s: a
# part gets what is left, none starts with under 20 s), and a failed part does not stop the next;
# OUT_DIR/parts.txt lists each part's exit status and seconds. GPU_CHECK_PARTS="learn ddp" runs only
# the parts named (default: all). CI's CPU machine never runs this.
set -uo pipefail
out=$(realpath -m "${1:?usage: bash ci/gpu_check.sh OUT_DIR [FASHION_MNIST_ROOT]}")
fmnist=$(realpath -m "${2:-/usr/share/datasets/fashion-mnist}")
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-1500}))

part() {   # part NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 t0=$SECONDS rc left=$((deadline - SECONDS))
  shift 2
  [[ " ${GPU_CHECK_PARTS:-tests bench learn ddp compile cells} " == *" $name "* ]] || return 0
  if ((left < 20)); then
    echo "== $name: skipped, $left s of GPU_CHECK_BUDGET_S left"
    echo "$name skipped 0" >>"$out/parts.txt"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit} s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@"
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  echo "$name $rc $((SECONDS - t0))" >>"$out/parts.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.csv"
$py -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(0))" |
  tee "$out/versions.txt"

part tests 90 $py -m pytest -q -p no:cacheprovider tests/test_precision.py -k "cuda or gpu"
part bench 200 $py -m pipelines.bench --configs vit-s16,cpu-toy --precisions bf16 --device cuda \
  --steps 20 --warmup 5 --paired 10 --knn-full --no-data --out "$out/bench.json"
part learn 480 $py -m pipelines.pretrain --out "$out/runs/learn" --set profile=default \
  --set data.root="$fmnist" --set data.num_workers=8 --set train.device=cuda
part ddp 60 $py -m torch.distributed.run --standalone --nproc_per_node=1 -m pipelines.pretrain \
  --out "$out/runs/ddp" --set data.root="$fmnist" --set train.epochs=2 --set train.device=cuda
part compile 120 $py -m pipelines.bench --configs vit-s16 --precisions bf16 --device cuda --steps 10 \
  --warmup 3 --compile --no-official --no-knn --no-data --out "$out/bench_compile.json"
# the plain run first: its JSON is kept when the compiled one (a compile per process) runs out of time
part cells 450 bash -c 'rc=0
  for compile in false true; do
    $1 -m pipelines.launch.sharing --set profile=default --set train.device=cuda --set train.compile=$compile \
      --out "$2/cells$([[ $compile == true ]] && echo _compile).json" || rc=1
  done
  exit $rc' cells "$py" "$out"
cat "$out/parts.txt"
