"""CIFAR-100 from TFDS: as CIFAR-10 (ResNet-18, CIFAR stem, batch 512, 1000 epochs).

Validation: the last 5,000 training images (the paper's split has 5,067).
"""

from byol_jax import config as config_lib


def get_config():
  return config_lib.small_images_config('cifar100')
