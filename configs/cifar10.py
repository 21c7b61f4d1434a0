"""CIFAR-10 from TFDS: ResNet-18 (CIFAR stem), batch 512, 1000 epochs, 45k/5k/10k splits.

    python -m byol_jax.train --config=configs/cifar10.py --workdir=/tmp/byol_cifar10
For the JPEG archive layout `train/<class>/<n>.jpg` use configs/folder.py.
"""

from byol_jax import config as config_lib


def get_config():
  return config_lib.small_images_config('cifar10')
