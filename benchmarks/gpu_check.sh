#!/usr/bin/env bash
# The GPU checks of the throughput work, as one script for a lent GPU machine (see README,
# "Measured figures"). Run from the repository root after the install line that
# ../shared/gpu/wheels.sh prints; everything it prints is also written to $OUT/gpu_check.txt.
#
#   bash benchmarks/gpu_check.sh            # about 6 minutes on one H100/H200
#
# 1. the stacking and worker tests, on the GPU (DLBENCH_TEST_DEVICE=cuda);
# 2. stacked vs one at a time, N = 8 and 50 (benchmarks/stacking.py);
# 3. the per-trial overhead against a bare loop (benchmarks/overhead.py);
# 4. `dlbench run ablation.toml` whole: --jobs 1 --stack-size 1 vs the default;
# 5. `dlbench reproduce` of a stacked member (must print REPRODUCED, difference 0);
# 6. the tuned study ablations/tuned_dropout.toml whole (its rounds stack on the GPU).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.txt") 2>&1
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
DATA=${DATA:-/tmp/data}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 1. tests on the GPU"
DLBENCH_TEST_DEVICE=cuda timeout 600 python -m pytest -q -x tests/test_stacking.py 2>&1 | tail -5

echo "== 2. stacked vs one at a time"
timeout 600 python benchmarks/stacking.py --device cuda --members 8 50 --epochs 20 --repeats 3

echo "== 3. overhead vs a bare loop"
timeout 300 python benchmarks/overhead.py --device cuda --epochs 20 --repeats 3

echo "== 4. the whole ablation.toml"
python -m dlbench.cli data prepare --data-dir "$DATA" --no-dvc > /dev/null
for way in "--jobs 1 --stack-size 1" ""; do
  rm -rf /tmp/gpu_store && mkdir -p /tmp/gpu_store
  start=$(date +%s.%N)
  python -m dlbench.cli run ablation.toml --data-dir "$DATA" --tracking-uri sqlite:////tmp/gpu_store/m.db \
      --reports-dir /tmp/gpu_store/reports --checkpoint-dir /tmp/gpu_store/ckpt $way > /tmp/gpu_store/run.log 2>&1
  code=$?
  end=$(date +%s.%N)
  echo "dlbench run ablation.toml ${way:-(default)}: exit $code, $(python -c "print(f'{$end - $start:.1f}')") s"
  grep -h "^| on\|^| pretrained\|^| activation=relu" /tmp/gpu_store/reports/*/claims.md | cut -c1-120
done

echo "== 5. reproduce a stacked member"
run=$(python - <<'EOF'
from mlflow.tracking import MlflowClient
c = MlflowClient("sqlite:////tmp/gpu_store/m.db")
exp = c.get_experiment_by_name("standard-ablations")
runs = c.search_runs([exp.experiment_id], "tags.`dlbench.stack_member` = '1'", max_results=1)
print(runs[0].info.run_id if runs else "")
EOF
)
[ -n "$run" ] && python -m dlbench.cli reproduce "$run" --tracking-uri sqlite:////tmp/gpu_store/m.db --data-dir "$DATA"

echo "== 6. a tuned study: ablations/tuned_dropout.toml (24 tuning trials in rounds, then 10 final)"
rm -rf /tmp/gpu_tuned && mkdir -p /tmp/gpu_tuned
start=$(date +%s.%N)
python -m dlbench.cli run ablations/tuned_dropout.toml --data-dir "$DATA" --tracking-uri sqlite:////tmp/gpu_tuned/m.db \
    --reports-dir /tmp/gpu_tuned/reports --checkpoint-dir /tmp/gpu_tuned/ckpt > /tmp/gpu_tuned/run.log 2>&1
code=$?
end=$(date +%s.%N)
echo "dlbench run ablations/tuned_dropout.toml: exit $code, $(python -c "print(f'{$end - $start:.1f}')") s"
grep -h "^| on\|^| off" /tmp/gpu_tuned/reports/dropout/claims.md /tmp/gpu_tuned/reports/dropout/tuned.md | cut -c1-120
