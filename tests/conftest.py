"""Shared test setup: 2 simulated CPU devices, tiny configs, synthetic batches.

XLA_FLAGS must be set before jax is imported, which pytest guarantees by loading this
file first. Run with e.g. XLA_FLAGS=--xla_force_host_platform_device_count=4 to change.
"""

import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / 'shared' / 'data' / 'cifar10' / 'train.tar.gz'


def tiny_config(image_size: int = 16):
  """A config whose step compiles and runs in seconds on a CPU."""
  from byol_jax import config as config_lib
  config = config_lib.base_config()
  config.model.encoder = 'tiny'
  config.model.width_multiplier = 0.5
  config.model.stem = 'cifar'
  config.model.projector_hidden_size = 32
  config.model.predictor_hidden_size = 32
  config.model.projection_size = 16
  config.data.image_size = image_size
  config.training.batch_size = 8
  config.training.epochs = 10
  config.optimizer.warmup_epochs = 1
  return config


def random_batch(batch: int, image_size: int, num_classes: int = 10, seed: int = 0):
  rng = np.random.RandomState(seed)
  shape = (batch, image_size, image_size, 3)
  return {'view1': rng.randint(0, 256, shape).astype(np.uint8),
          'view2': rng.randint(0, 256, shape).astype(np.uint8),
          'labels': rng.randint(0, num_classes, (batch,)).astype(np.int32)}


def shard(batch, num_devices: int):
  """[global, ...] -> [devices, global / devices, ...]."""
  return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}


@pytest.fixture
def cifar_archive():
  if not SHARED_CIFAR10.exists():
    pytest.skip(f'{SHARED_CIFAR10} is absent (only the project machines have ../shared)')
  return SHARED_CIFAR10
