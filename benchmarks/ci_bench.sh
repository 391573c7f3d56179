#!/usr/bin/env bash
# CI benchmark gate: bench the embedded model and the kernels briefly with this checkout (the
# current side) and with a base revision (the baseline side), interleaved in this job, pair after
# pair (baseline first in pairs 1, 3, 5 ..., current first in pairs 2, 4 ...), verify the current receipts
# (the generation one with --replay), and gate each kind pair by pair (`pybitnet gate`: a sign
# test on the per-pair ratios, thresholds in benchmarks/baseline/gate.toml). Load that slows both
# sides of a pair cancels; numbers recorded on another day are never the reference.
#
#   benchmarks/ci_bench.sh [OUT_DIR]     receipts and gate reports go to OUT_DIR
#
# The current side runs $PYBITNET (default: .venv/bin/python -m pybitnet.cli). The baseline side
# runs $PYBITNET_BASE where set (benchmarks/gate_power.py sets both); otherwise the base revision
# ($PYBITNET_GATE_BASE, default: the merge-base with origin/main or main, or HEAD^ on main
# itself) is checked out in a git worktree and installed beside it with the same Python (a
# second build of the extension). $PYBITNET_GATE_PAIRS pairs (default 6: the fewest that can
# reach the gate's false-alarm rate).
#
# Exit status: 0 when both gates pass, or only ask for attention (printed, not fatal); 1 when a
# gate fails; 2 on bad input or a receipt that does not verify.
set -euo pipefail
export COLUMNS=${COLUMNS:-120} # wide enough for the tables in a CI log
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
read -r -a current <<<"${PYBITNET:-$python -m pybitnet.cli}"
pairs=${PYBITNET_GATE_PAIRS:-6}
out=${1:-$(mktemp -d)}
mkdir -p "$out"

# pp128, not pp32: 32 prompt tokens prefill in ~3 ms, so a repetition fits in one time slice
# of the scheduler and, on a loaded machine, a whole process ran either alone or not (pp32
# medians of 1,400 or 10,000 tok/s for the same code, one pair to the next).
generation=(bench -p 128 -n 32 -r 5 --warmup 1 -t 1)
kernels=(bench kernels --shapes 2560x2560 --batches 1,8 --samples 8 --warmup 2 -t 1
  --codecs I2_S --codec-shape 256x2560)

if [[ -n "${PYBITNET_BASE:-}" ]]; then
  read -r -a base <<<"$PYBITNET_BASE"
else
  rev=${PYBITNET_GATE_BASE:-}
  for branch in origin/main main; do
    [[ -z "$rev" ]] && rev=$(git merge-base HEAD "$branch" 2>/dev/null) || true
  done
  [[ -z "$rev" || "$rev" == "$(git rev-parse HEAD)" ]] && rev=$(git rev-parse HEAD^ 2>/dev/null) || true
  if [[ -z "$rev" ]]; then
    echo "ci_bench: no base revision to compare with (set PYBITNET_GATE_BASE): gate skipped" >&2
    exit 0
  fi
  tree="$out/base-tree"
  trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
  git worktree add -q --detach -f "$tree" "$rev"
  echo "ci_bench: building the base revision $rev into $tree/.site"
  # Installed inside its worktree, so that its receipts name its commit (tool.git_commit).
  "$python" -m pip install -q --no-deps --target "$tree/.site" "$tree"
  base=(env PYTHONPATH="$tree/.site" "$python" -m pybitnet.cli)
fi

# One bench of each kind by one side: side, pair number.
measure() {
  local -n cmd=$1
  "${cmd[@]}" "${generation[@]}" --receipt "$out/generation-$1-$2.json" >/dev/null
  "${cmd[@]}" "${kernels[@]}" --receipt "$out/kernels-$1-$2.json" >/dev/null
}
for ((k = 1; k <= pairs; k++)); do
  if ((k % 2)); then measure base "$k" && measure current "$k"; else measure current "$k" && measure base "$k"; fi
done
"${current[@]}" verify "$out/generation-current-1.json" --replay \
  --json-file "$out/verify-generation.json" >/dev/null || exit 2
"${current[@]}" verify "$out/kernels-current-1.json" \
  --json-file "$out/verify-kernels.json" >/dev/null || exit 2

status=0
for name in generation kernels; do
  receipts=()
  for ((k = 1; k <= pairs; k++)); do receipts+=("$out/$name-base-$k.json" "$out/$name-current-$k.json"); done
  code=0
  "${current[@]}" gate "${receipts[@]}" --config benchmarks/baseline/gate.toml \
    --markdown "$out/gate-$name.md" --json-file "$out/gate-$name.json" || code=$?
  case $code in
    0) ;;
    3) echo "ci_bench: $name gate asks for attention (not fatal); see $out/gate-$name.md" ;;
    *) status=$((code > status ? code : status)) ;;
  esac
done
echo "ci_bench: receipts and reports in $out"
exit $status
