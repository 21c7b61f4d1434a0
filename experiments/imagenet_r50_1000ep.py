"""Table 1: ResNet-50 1x, 1000 epochs, batch 4096 -> 74.3% top-1 / 91.6% top-5 (linear).

Sized for 512 TPU v3 cores (the paper: about 8 h); on fewer devices keep the global
batch with --config.training.accumulation_steps=N (see README for the BN caveat).
    python experiments/imagenet_r50_1000ep.py --workdir=gs://bucket/r50 --data_dir=gs://bucket/tfds --multihost
"""

from reproduce import run

if __name__ == '__main__':
  run('ResNet-50 1x, 1000 epochs (Table 1)', 'configs/imagenet.py:1000',
      paper='74.3 top-1, 91.6 top-5 (linear evaluation, ImageNet val)',
      hardware='512 TPU v3 cores, batch 4096, 312,784 steps')
