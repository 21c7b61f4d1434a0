"""Appendix G: batch 512, 1000 epochs, lr 0.4, tau 0.9995 -> 73.7% top-1.

Sized for 64 TPU v3 cores (the paper: about 4 days, ~2.5M steps).
    python experiments/imagenet_batch512.py --workdir=... --data_dir=... --multihost
"""

from reproduce import run

if __name__ == '__main__':
  run('ResNet-50, batch 512 (Appendix G)', 'configs/imagenet_small_batch.py',
      paper='73.7 top-1 (linear evaluation)', hardware='64 TPU v3 cores, batch 512')
