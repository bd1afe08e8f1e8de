#!/usr/bin/env bash
# The GPU checks of the throughput work, as one script for a lent GPU machine (see README,
# "Measured figures"). Run from the repository root after the install line that
# ../shared/gpu/wheels.sh prints; everything it prints is also written to $OUT/gpu_check.txt,
# and each study's run log to $OUT as soon as that step ends.
#
#   bash benchmarks/gpu_check.sh                  # every step, about 10 minutes on one H100
#   STEPS="tests stacking study" bash benchmarks/gpu_check.sh   # some, in that order
#
# tests      the stacking and CUDA-graph tests on the GPU (DLBENCH_TEST_DEVICE=cuda);
# stacking   stacked (eager and CUDA graphs) vs one at a time, N = 8 and 50 (benchmarks/stacking.py);
# study      `dlbench run ablation.toml` whole, the default (CUDA graphs on);
# reproduce  `dlbench reproduce` of a stacked member of that run and of a pretrained one (its greedy
#            pretraining stacked): each must print REPRODUCED, difference 0;
# overhead   the per-trial overhead against a bare loop (benchmarks/overhead.py), and a lone trial as
#            `dlbench run` trains it on a GPU (a stack of one, CUDA graphs);
# lone       ten trials that cannot stack (benchmarks/studies/lone_trials.toml): stacks of one with
#            graphs, then --cuda-graphs off;
# eager      `dlbench run ablation.toml --cuda-graphs off` (the same, stepping eagerly);
# alone      `dlbench run ablation.toml --jobs 1 --stack-size 1` (one trial at a time: minutes);
# tuned      the tuned study ablations/tuned_dropout.toml whole (its rounds stack);
# sweep500   500 trials (benchmarks/studies/lr_sweep_500.toml) whole;
# ingest     what the parent spends writing a trial to MLflow on this machine's CPU
#            (benchmarks/tracking_ingest.py): the pace a 500-trial study cannot beat.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.txt") 2>&1
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
DATA=${DATA:-/tmp/data}
STEPS=${STEPS:-tests study reproduce overhead lone sweep500 ingest eager stacking tuned alone}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
python -m dlbench.cli data prepare --data-dir "$DATA" --no-dvc > /dev/null

# stamp: each line prefixed with the seconds since it started (where a run's time goes)
stamp() { python -u -c "import sys, time
t = time.time()
for line in sys.stdin: print(f'{time.time() - t:6.1f}  {line}', end='')"; }

# run_study NAME FILE [OPTIONS...]: a whole `dlbench run` in a fresh store /tmp/gpu_NAME, timed
run_study() {
  local name=$1 file=$2; shift 2
  local store=/tmp/gpu_$name
  rm -rf "$store" && mkdir -p "$store"
  local start=$(date +%s.%N)
  timeout 300 python -m dlbench.cli run "$file" --data-dir "$DATA" --tracking-uri "sqlite:///$store/m.db" \
      --reports-dir "$store/reports" --checkpoint-dir "$store/ckpt" "$@" 2>&1 | stamp > "$store/run.log"
  local code=${PIPESTATUS[0]}
  local end=$(date +%s.%N)
  echo "dlbench run $file $*: exit $code, $(python -c "print(f'{$end - $start:.1f}')") s"
  cp "$store/run.log" "$OUT/$name.log"
  [ $code -ne 0 ] && tail -30 "$store/run.log"
  grep -h "^| " "$store"/reports/*/claims.md 2>/dev/null | grep -v "^| claim\|^|---" | cut -c1-110
}

step_tests() {
  DLBENCH_TEST_DEVICE=cuda timeout 300 python -m pytest -o addopts="" -q -x tests/test_step_graph.py \
      tests/test_stacking.py 2>&1 | tail -15
}
step_stacking() {
  timeout 300 python benchmarks/stacking.py --device cuda --members 8 50 --epochs 20 --repeats 2 --alone 2
}
step_study() { run_study study ablation.toml; }
step_eager() { run_study eager ablation.toml --cuda-graphs off; }
step_alone() { run_study alone ablation.toml --jobs 1 --stack-size 1; }
step_tuned() { run_study tuned ablations/tuned_dropout.toml; }
step_lone() {
  run_study lone benchmarks/studies/lone_trials.toml
  run_study lone_eager benchmarks/studies/lone_trials.toml --cuda-graphs off
}
step_sweep500() { run_study sweep500 benchmarks/studies/lr_sweep_500.toml; }
step_ingest() { timeout 300 python benchmarks/tracking_ingest.py --trials 100 --repeats 3 2>&1 | grep -v " INFO "; }
step_overhead() { timeout 300 python benchmarks/overhead.py --device cuda --epochs 20 --repeats 3; }
step_reproduce() {
  # a stacked member, and a member whose greedy pretraining ran stacked with its level's other seeds
  local runs run
  runs=$(python - <<'EOF'
from mlflow.tracking import MlflowClient
c = MlflowClient("sqlite:////tmp/gpu_study/m.db")
exp = c.get_experiment_by_name("standard-ablations")
for where in ("tags.`dlbench.stack_member` = '1'", "params.`initializer.name` = 'greedy_autoencoder'"):
    runs = c.search_runs([exp.experiment_id], where, max_results=1) if exp else []
    if runs:
        t = runs[0].data.tags
        print(runs[0].info.run_id, f"{t.get('mlflow.runName')}:cuda_graphs={t.get('dlbench.cuda_graphs')},"
              f"stacked_init={t.get('dlbench.stacked_init')}")
EOF
)
  while read -r run; do
    [ -z "$run" ] && continue
    echo "reproduce ${run#* }"
    timeout 120 python -m dlbench.cli reproduce "${run%% *}" --tracking-uri sqlite:////tmp/gpu_study/m.db \
        --data-dir "$DATA"
  done <<< "$runs"
}

SECONDS=0
for step in $STEPS; do
  echo "== $step ($SECONDS s)"
  "step_$step"
done
echo "== done ($SECONDS s)"
