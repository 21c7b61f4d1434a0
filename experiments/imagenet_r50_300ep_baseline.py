"""The ablation baseline: ResNet-50, 300 epochs, lr 0.3, wd 1e-6, tau 0.99 -> 72.5% top-1.

Sized for 512 TPU v3 cores at batch 4096 (93,835 steps); the paper averages 3 seeds.
    python experiments/imagenet_r50_300ep_baseline.py --workdir=... --data_dir=... --multihost
"""

from reproduce import run

if __name__ == '__main__':
  run('ResNet-50, 300-epoch ablation baseline (Tables 5, 16-17)', 'configs/imagenet.py:300',
      paper='72.5 top-1, 90.8 top-5 (mean of 3 seeds)',
      hardware='512 TPU v3 cores, batch 4096, 93,835 steps')
