"""Where metrics go: `<workdir>/metrics.jsonl`, TensorBoard event files, the console.

Only process 0 writes. Each JSONL line is one object: {"step": int, "split": str,
<scalar name>: float, ...}; `split` is "train" for training scalars and the name of the
evaluated split role ("eval") for monitoring results.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Mapping

from absl import flags
from absl import logging
import jax

METRICS_FILE = 'metrics.jsonl'


class MetricWriter:

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), 'a')
    if tensorboard:
      import tensorboardX  # only process 0 needs it
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split}
    record.update({k: float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(f'{split}/{key}', float(value), int(step))
      self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def progress_line(step: int, total: int, scalars: Mapping[str, float], images_per_sec: float,
                  data_wait_fraction: float, seconds_left: float) -> str:
  eta = datetime.timedelta(seconds=int(max(seconds_left, 0)))
  return (f'step {step}/{total} | loss {scalars["loss"]:.4f} | repr {scalars["repr_loss"]:.4f}'
          f' | top1 {scalars["top1_accuracy"]:.3f} | lr {scalars["learning_rate"]:.4g}'
          f' | tau {scalars["tau"]:.5f} | {images_per_sec:.1f} img/s'
          f' | data-wait {100 * data_wait_fraction:.0f}% | ETA {eta}')


def console(message: str) -> None:
  if jax.process_index() == 0:
    print(message, file=sys.stdout, flush=True)


def progress(message: str, *args) -> None:
  """A %-formatted progress line on the console (process 0), as the training loop's."""
  console(message % args if args else message)


def quiet_library_logs() -> None:
  """WARNING unless --verbosity was given: library INFO chatter hides the progress lines."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
