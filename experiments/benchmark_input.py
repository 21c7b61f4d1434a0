r"""Input pipeline throughput: images/s delivered to the devices, pipeline alone.

Two cases, both pretraining batches (two random crops per image, uint8) taken
through `prefetch_to_device` and waited on until they are on the devices:
  1. CIFAR-10 from the shared archive (prepared into --data_dir, or a temporary
     directory), 32 px crops.
  2. 224 px crops of generated 400x350 JPEGs (a few hundred, prepared the same
     way), standing in for ImageNet-sized images.
An image counts once (its two crops are one image); crops/s is twice that.

Usage:
  python experiments/benchmark_input.py [--data_dir=DIR] [--batches=300] \
      [--warmup=20] [--cifar_batch=256] [--large_batch=32] [--large_images=384]
"""

import os
import pathlib
import tempfile
import time

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import tensorflow as tf

from byol_jax import input_pipeline
from byol_jax import prepare_folder

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / 'shared' / 'data' / 'cifar10' / 'train.tar.gz'

_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data dir to prepare into / reuse; default: a '
    'temporary directory, removed afterwards.')
_BATCHES = flags.DEFINE_integer('batches', 300, 'Timed batches per case.')
_WARMUP = flags.DEFINE_integer('warmup', 20, 'Untimed batches first (fills '
                               'the shuffle buffer, compiles the map).')
_CIFAR_BATCH = flags.DEFINE_integer('cifar_batch', 256, 'Global batch, 32 px.')
_LARGE_BATCH = flags.DEFINE_integer('large_batch', 32, 'Global batch, 224 px.')
_LARGE_IMAGES = flags.DEFINE_integer('large_images', 384,
                                     'Generated 400x350 JPEGs.')
_SHUFFLE_BUFFER = flags.DEFINE_integer('shuffle_buffer', 10_000, 'Examples.')
_WITH_STEP = flags.DEFINE_bool(
    'with_step', False, 'Also time the BYOL step (ResNet-18 at 32 px, ResNet-50 at '
    '224 px) fed by the same pipeline, --step_batches batches after 1 warm-up.')
_STEP_BATCHES = flags.DEFINE_integer('step_batches', 5, 'Timed steps with --with_step.')


def _round_to_devices(batch_size: int) -> int:
  devices = jax.device_count()
  return max(devices, batch_size // devices * devices)


def images_per_second(batches, global_batch_size: int, warmup: int,
                      timed: int) -> float:
  """Images/s of batches arriving on the devices, after `warmup` batches."""
  on_device = input_pipeline.prefetch_to_device(batches, size=2)
  for _ in range(warmup):
    jax.block_until_ready(next(on_device))
  start = time.perf_counter()
  for _ in range(timed):
    jax.block_until_ready(next(on_device))
  return timed * global_batch_size / (time.perf_counter() - start)


def step_images_per_second(config, batches, warmup: int, timed: int) -> float:
  """The BYOL step's images/s fed by the same pipeline (input + step together).

  ResNet-18 with the CIFAR stem at 32 px, ResNet-50 with the ImageNet stem above;
  if this rate is close to the step-only figure of experiments/benchmark_step.py the
  input does not limit the step.
  """
  from byol_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from byol_jax import update  # pylint: disable=g-import-not-at-top
  full = config_lib.base_config()
  small = config.image_size <= 64
  full.model.encoder = 'resnet18' if small else 'resnet50'
  full.model.stem = 'cifar' if small else 'imagenet'
  full.data.image_size = config.image_size
  full.training.batch_size = _round_to_devices(
      _CIFAR_BATCH.value if small else _LARGE_BATCH.value)
  settings = update.settings_from_config(full, 1_000_000, num_classes=1000)
  network, optimizer, update_fn = update.build(full, settings)
  step = update.pmap_update(update_fn)
  state = update.replicate(update.init_state(full, network, optimizer,
                                             config.image_size))
  on_device = input_pipeline.prefetch_to_device(batches, size=2)
  for _ in range(warmup):
    state, metrics = step(state, next(on_device))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(timed):
    state, metrics = step(state, next(on_device))
  jax.block_until_ready(metrics)
  return timed * full.training.batch_size / (time.perf_counter() - start)


def _generate_large_jpegs(root: pathlib.Path, count: int) -> None:
  """`count` smooth random 350x400 (HxW) JPEGs in 4 classes, ~ImageNet-like."""
  rng = np.random.default_rng(0)
  for i in range(count):
    coarse = rng.uniform(0, 255, (1, 12, 14, 3)).astype(np.float32)
    image = tf.image.resize(coarse, [350, 400], method='bicubic')[0]
    image += rng.normal(0, 8, image.shape)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    path = root / 'train' / f'class{i % 4}' / f'{i:05d}.jpg'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_jpeg(image, quality=90).numpy())


def _run_case(name: str, data_dir: str, image_size: int, batch_size: int,
              note: str) -> None:
  config = ml_collections.ConfigDict(dict(
      dataset=name, data_dir=data_dir, train_split='train',
      image_size=image_size, shuffle_buffer=_SHUFFLE_BUFFER.value))
  batch_size = _round_to_devices(batch_size)
  batches = input_pipeline.pretrain_batches(
      config, global_batch_size=batch_size, seed=0)
  rate = images_per_second(batches, batch_size, _WARMUP.value,
                           _BATCHES.value)
  print(f'{note}: {rate:,.0f} images/s ({2 * rate:,.0f} crops/s), '
        f'{_BATCHES.value} batches of {batch_size} after {_WARMUP.value} '
        'warm-up', flush=True)
  if _WITH_STEP.value:
    step_rate = step_images_per_second(
        config, input_pipeline.pretrain_batches(
            config, global_batch_size=batch_size, seed=0),
        1, _STEP_BATCHES.value)
    print(f'{note}: pipeline + BYOL step {step_rate:,.1f} images/s '
          f'(input alone: {rate:,.0f})', flush=True)


def main(argv):
  del argv
  print(f'host: {os.cpu_count()} CPUs; devices: {jax.devices()}', flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = _DATA_DIR.value or tmp
    if CIFAR.exists():
      start = time.perf_counter()
      info = prepare_folder.prepare(str(CIFAR), 'cifar10_folder', data_dir)
      print(f'CIFAR-10 ready in {time.perf_counter() - start:.1f} s '
            f'({"reused" if info.already_prepared else "prepared"}).',
            flush=True)
      _run_case('cifar10_folder', data_dir, 32, _CIFAR_BATCH.value,
                'CIFAR-10, 32 px, two crops')
    else:
      print(f'skipping CIFAR-10: {CIFAR} is absent', flush=True)
    large = f'large_jpeg_{_LARGE_IMAGES.value}'
    source = pathlib.Path(tmp) / 'large_src'
    if not (pathlib.Path(data_dir) / large).exists():
      _generate_large_jpegs(source, _LARGE_IMAGES.value)
    prepare_folder.prepare(str(source), large, data_dir)
    _run_case(large, data_dir, 224, _LARGE_BATCH.value,
              f'{_LARGE_IMAGES.value} generated 400x350 JPEGs, 224 px, '
              'two crops')


if __name__ == '__main__':
  app.run(main)
