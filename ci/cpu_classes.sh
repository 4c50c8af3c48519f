#!/usr/bin/env bash
# The test suite on the CPU classes these machines come in, from one machine: each class runs with
# the instruction sets its kernels would use capped by the libraries' own switches (PyTorch's
# ATEN_CPU_CAPABILITY, oneDNN's ONEDNN_MAX_CPU_ISA, MKL's MKL_ENABLE_INSTRUCTIONS), so the same
# kernels, vector widths and reduction orders run as on that CPU (docs/performance.md):
#   avx2         an AVX2-only CPU (bf16 matmul ~1 GFLOP/s: auto picks fp32)
#   avx512-bf16  AVX-512 with AVX512-BF16 and no AMX (bf16 slower than fp32)
#   native       what this CPU has
# A cap can only remove instructions: on an AVX2 machine the avx512 classes run as avx2.
#   bash ci/cpu_classes.sh OUT_DIR [CLASSES] [-- PYTEST_ARGS...]
# CLASSES: comma-separated (default avx2,avx512-bf16,native); PYTEST_ARGS default: the whole suite.
# OUT_DIR/<class>.log holds each run, OUT_DIR/classes.txt "<class> <exit status> <seconds> <capability>".
set -uo pipefail
out=$(realpath -m "${1:?usage: bash ci/cpu_classes.sh OUT_DIR [CLASSES] [-- PYTEST_ARGS...]}")
shift
classes=avx2,avx512-bf16,native
if [[ $# -gt 0 && $1 != "--" ]]; then classes=$1; shift; fi
[[ ${1:-} == "--" ]] && shift
args=("$@")
((${#args[@]})) || args=(-q -p no:cacheprovider)
cd "$(dirname "$0")/.."
mkdir -p "$out"
py=${PYTHON:-python3}
status=0
for cls in ${classes//,/ }; do
  case $cls in
    avx2) caps=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2) ;;
    avx512-bf16) caps=(ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 MKL_ENABLE_INSTRUCTIONS=AVX512) ;;
    native) caps=() ;;
    *) echo "ci/cpu_classes.sh: unknown class '$cls' (allowed: avx2, avx512-bf16, native)" >&2; exit 2 ;;
  esac
  cap=$(env "${caps[@]}" "$py" -c "import torch; print(torch.backends.cpu.get_cpu_capability())" 2>/dev/null)
  echo "== $cls (${caps[*]:-no caps}; torch CPU capability $cap): pytest ${args[*]}"
  t0=$SECONDS
  env "${caps[@]}" "$py" -m pytest "${args[@]}" >"$out/$cls.log" 2>&1
  rc=$?
  tail -n 3 "$out/$cls.log"
  echo "$cls $rc $((SECONDS - t0)) $cap" >>"$out/classes.txt"
  ((rc)) && status=1
done
exit $status
