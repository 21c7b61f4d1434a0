r"""Throughput of the compiled BYOL update step (not a test: it prints figures).

Feeds pre-cropped uint8 batches already on the devices, so only the step is timed
(augmentations + 4 forward passes + backward + LARS + EMA). Reports the compile time
and the median images/second over several steps after warm-up, for every case on
whatever devices exist:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python experiments/benchmark_step.py
    python experiments/benchmark_step.py --cases=resnet50_224 --precisions=bfloat16 \
        --batch_per_device=128 --steps=20        # on a GPU/TPU
"""

import argparse
import statistics
import time

import jax
import numpy as np

from byol_jax import config as config_lib
from byol_jax import update

CASES = {
    # name: (encoder, stem, image size)
    'resnet18_cifar_32': ('resnet18', 'cifar', 32),
    'resnet50_224': ('resnet50', 'imagenet', 224),
}


def benchmark(case: str, precision: str, batch_per_device: int, steps: int, warmup: int):
  encoder, stem, size = CASES[case]
  config = config_lib.base_config()
  config.model.encoder, config.model.stem, config.model.precision = encoder, stem, precision
  config.data.image_size = size
  devices = jax.local_device_count()
  config.training.batch_size = batch_per_device * devices
  settings = update.settings_from_config(config, num_train_examples=1_281_167,
                                         num_classes=1000)
  network, optimizer, update_fn = update.build(config, settings)
  step = update.pmap_update(update_fn)
  state = update.replicate(update.init_state(config, network, optimizer, size))
  rng = np.random.RandomState(0)
  shape = (devices, batch_per_device, size, size, 3)
  batch = {'view1': rng.randint(0, 256, shape, dtype=np.uint8),
           'view2': rng.randint(0, 256, shape, dtype=np.uint8),
           'labels': rng.randint(0, 1000, shape[:2]).astype(np.int32)}
  batch = jax.device_put(batch, update.device_sharding())

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return compile_seconds, config.training.batch_size / median, median


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', default=','.join(CASES))
  parser.add_argument('--precisions', default='float32,bfloat16')
  parser.add_argument('--batch_per_device', type=int, default=None,
                      help='default: 32 for 32-px cases, 4 for 224-px cases (CPU-sized)')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  args = parser.parse_args()
  devices = jax.devices()
  print(f'{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), '
        f'jax {jax.__version__}')
  print(f'{"case":<20} {"precision":<9} {"batch":>6} {"compile s":>10} '
        f'{"step s":>8} {"images/s":>9}')
  for case in args.cases.split(','):
    size = CASES[case][2]
    per_device = args.batch_per_device or (32 if size <= 64 else 4)
    for precision in args.precisions.split(','):
      compile_s, images_per_s, step_s = benchmark(case, precision, per_device, args.steps,
                                                  args.warmup)
      print(f'{case:<20} {precision:<9} {per_device * len(jax.local_devices()):>6} '
            f'{compile_s:>10.1f} {step_s:>8.3f} {images_per_s:>9.1f}', flush=True)


if __name__ == '__main__':
  main()
