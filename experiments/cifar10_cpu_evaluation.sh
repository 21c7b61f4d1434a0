#!/usr/bin/env bash
# Evaluates the CIFAR-10 CPU run (configs/cifar10_cpu.py) and the same encoder at its
# initialisation: linear evaluation, kNN, 10% fine-tuning, export parity. CPU-sized
# (about 25 minutes on 2 cores); every figure lands in <out>/<protocol>_<source>/results.json.
#
#   bash experiments/cifar10_cpu_evaluation.sh <pretraining workdir> <tfds data_dir> <out>
#
# Splits of the shared archive (the `folder` preset): train[:-10000] fits, the next
# 5,000 select (lr / epochs), the last 5,000 (the pretraining run's validation split,
# never trained on) are reported. Shortened where CPU time demands it, as stated:
# linear eval on 2 precomputed crop+flip feature passes; fine-tuning sweeps 2 lrs x 8
# epochs instead of the paper's 5 lrs x {30, 50}.
set -euo pipefail
pretrained=${1:?pretraining workdir}
data_dir=${2:?tfds data_dir holding cifar10_shared}
out=${3:?output directory}
data=(--config.data.dataset=cifar10_shared "--config.data.data_dir=${data_dir}")

# Runs whose results.json says "done" are kept (re-running the script resumes).
done_already() { grep -qs '"status": "done"' "$1/results.json"; }

for source in pretrained init; do
  init=(--config.random_init=False)
  [[ ${source} == init ]] && init=(--config.random_init=True)
  done_already "${out}/knn_${source}" || python -m byol_jax.knn_eval --config=configs/knn_eval.py:folder \
      --workdir="${out}/knn_${source}" --config.pretrained="${pretrained}" "${data[@]}" "${init[@]}"
  done_already "${out}/linear_${source}" || python -m byol_jax.linear_eval --config=configs/linear_eval.py:folder \
      --workdir="${out}/linear_${source}" --config.pretrained="${pretrained}" "${data[@]}" \
      "${init[@]}" --config.feature_epochs=2
  done_already "${out}/finetune10_${source}" || python -m byol_jax.finetune --config=configs/finetune.py:folder \
      --workdir="${out}/finetune10_${source}" --config.pretrained="${pretrained}" "${data[@]}" \
      "${init[@]}" --config.label_fraction=0.1 --config.optimizer.base_lrs="(0.1,0.02)" \
      --config.training.epochs_grid="(8.0,)"
done
if python -c 'import torch' 2>/dev/null; then
  python experiments/export_parity.py --checkpoint="${pretrained}" --dataset=cifar10_shared \
      --data_dir="${data_dir}" --split='train[-5000:]' --num_images=512
fi
python - "${out}" <<'EOF'
import json, os, sys
out = sys.argv[1]
for protocol in ('knn', 'linear', 'finetune10'):
  for source in ('pretrained', 'init'):
    r = json.load(open(os.path.join(out, f'{protocol}_{source}', 'results.json')))
    sel = r.get('selected', {})
    choice = {k: sel[k] for k in ('base_lr', 'epochs') if k in sel}
    print(f"{protocol:10s} {source:10s} test ({r['test']['split']}): top1 "
          f"{r['test']['top1_accuracy']:.4f} top5 {r['test']['top5_accuracy']:.4f}"
          f"  validation top1 {(sel.get('validation') or r.get('validation'))['top1_accuracy']:.4f}"
          f"  {choice}")
EOF
