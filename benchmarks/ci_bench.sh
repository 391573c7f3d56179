#!/usr/bin/env bash
# CI benchmark: bench the embedded model and the kernels briefly, verify both receipts (the
# generation one with --replay), and gate them against the committed baselines with the
# generous thresholds of benchmarks/baseline/gate.toml (a shared machine is noisy).
#
#   benchmarks/ci_bench.sh [OUT_DIR]            receipts and gate reports go to OUT_DIR
#   benchmarks/ci_bench.sh --update-baseline    measure and replace the committed baselines
#
# Exit status: 0 when both gates pass, or only ask for attention (a different host, a large
# improvement: printed, not fatal); 1 when a gate fails; 2 on bad input or a receipt that does
# not verify. PYBITNET names the command to run (default: .venv/bin/pybitnet).
set -euo pipefail
export COLUMNS=${COLUMNS:-120}  # wide enough for the tables in a CI log
cd "$(dirname "$0")/.."
pybitnet=${PYBITNET:-.venv/bin/pybitnet}
baseline=benchmarks/baseline

generation=(bench -p 32 -n 32 -r 7 --warmup 1 -t 1)
kernels=(bench kernels --shapes 2560x2560,640x2560 --batches 1,8 --samples 40 --warmup 5 -t 1
  --codecs F16,BF16,Q8_0,Q4_0,Q4_1,TQ1_0,TQ2_0,I2_S --codec-shape 256x2560)

if [[ "${1:-}" == "--update-baseline" ]]; then
  "$pybitnet" "${generation[@]}" --receipt "$baseline/generation.json"
  "$pybitnet" "${kernels[@]}" --receipt "$baseline/kernels.json"
  exit 0
fi

out=${1:-$(mktemp -d)}
mkdir -p "$out"
"$pybitnet" "${generation[@]}" --receipt "$out/generation.json"
"$pybitnet" "${kernels[@]}" --receipt "$out/kernels.json"
"$pybitnet" verify "$out/generation.json" --replay --json-file "$out/verify-generation.json" || exit 2
"$pybitnet" verify "$out/kernels.json" --json-file "$out/verify-kernels.json" || exit 2

status=0
for name in generation kernels; do
  code=0
  "$pybitnet" gate "$baseline/$name.json" "$out/$name.json" --config "$baseline/gate.toml" \
    --markdown "$out/gate-$name.md" --json-file "$out/gate-$name.json" || code=$?
  case $code in
    0) ;;
    3) echo "ci_bench: $name gate asks for attention (not fatal); see $out/gate-$name.md" ;;
    *) status=$((code > status ? code : status)) ;;
  esac
done
echo "ci_bench: receipts and reports in $out"
exit $status
