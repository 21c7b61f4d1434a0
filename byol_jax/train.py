r"""BYOL pretraining: `python -m byol_jax.train --config=configs/<file>.py --workdir=<dir>`.

Reads top to bottom: config -> data -> state (fresh or resumed) -> loop of pmapped
updates with logging, checkpoints and monitoring -> final evaluation. Without
`--config` it runs the built-in demo (`configs/demo.py`): no download, a few minutes
on a laptop CPU, and it ends by printing the kNN accuracy of the learned encoder next
to that of the same encoder at initialisation.

Starting again with the same workdir resumes from the newest readable checkpoint.
SIGTERM/SIGINT (preemption) write a checkpoint and exit 0.
"""

from __future__ import annotations

import signal
import threading
import time

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from byol_jax import checkpointing
from byol_jax import config as config_lib
from byol_jax import evaluation
from byol_jax import input_pipeline
from byol_jax import metric_writers
from byol_jax import update

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/<name>.py[:arg]); default: the built-in demo.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, logs and metrics go here.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-host runs launched by '
    'hand; TPU pods, SLURM and other clusters jax.distributed detects need only '
    '--multihost.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes of a multi-host run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process in a multi-host run.')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() with '
                               'cluster auto-detection (TPU pod, SLURM, ...).')


class NonFiniteLossError(FloatingPointError):
  """Training diverged; the last good checkpoint is kept."""


class PreemptionWatcher:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.event = threading.Event()
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning('received signal %d: checkpointing and exiting', signum)
    self.event.set()

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def prepare_data(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """Prepares a folder dataset on first use; returns (train examples, classes)."""
  source = config.data.get('prepare_from')
  if source:
    from byol_jax import prepare_folder  # only folder configs need it
    if jax.process_index() == 0:
      prepare_folder.prepare(source, config.data.dataset, config.data.data_dir,
                             skip_corrupt=config.data.skip_corrupt)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('prepare_folder')
  return (input_pipeline.num_examples(config.data, config.data.train_split),
          input_pipeline.num_classes(config.data))


def run_evaluation(config, features_fn, state, num_classes: int) -> dict[str, float]:
  """Online classifier + kNN on the eval split (centre crops, BN in inference mode)."""
  ev = config.evaluation
  make = lambda split: input_pipeline.prefetch_to_device(input_pipeline.eval_batches(
      config.data, split=split, global_batch_size=ev.batch_size))
  knn_split = ev.knn_train_split or config.data.train_split
  return evaluation.evaluate(
      features_fn, state.online_params, state.online_state,
      eval_batches=make(config.data.eval_split),
      knn_train_batches=make(knn_split) if ev.knn else None,
      num_classes=num_classes, k=ev.knn_k, temperature=ev.knn_temperature)


def input_position(step: int, batch_size: int, num_train: int) -> dict:
  consumed = step * batch_size
  return {'epoch': consumed // num_train, 'examples_consumed': consumed}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains per `config` in `workdir`; returns the final evaluation metrics."""
  config_lib.validate(config, device_count=jax.device_count())
  # The PRNG bit generator is JAX-global: scoped here so init and every traced step
  # draw the same bits (the official ones when False).
  with jax.threefry_partitionable(config.get('threefry_partitionable', True)):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  num_train, num_classes = prepare_data(config)
  config_lib.validate(config, device_count=jax.device_count(), num_train_examples=num_train)
  settings = update.settings_from_config(config, num_train, num_classes)
  training = config.training

  network, optimizer, update_fn = update.build(config, settings)
  p_update = update.pmap_update(update_fn)
  features_fn = evaluation.make_features_fn(network)

  checkpointer = checkpointing.Checkpointer(workdir, keep=training.keep_checkpoints)

  def pretrain_batches(first_batch: int):
    return input_pipeline.pretrain_batches(
        config.data, global_batch_size=settings.batch_size, seed=config.seed,
        start_step=first_batch)

  # The initial BN `average`s, read only by a step-0 evaluation: model.bn_init=
  # 'first_batch' is the official pmapped init on the first pretraining batch, which is
  # then consumed (batch k + 1 feeds step k), never trained on; 'centre_crops' uses
  # centre crops of the first training images, which every process reads alike, and
  # every batch is trained on.
  batch_offset = 1 if config.model.get('bn_init', 'centre_crops') == 'first_batch' else 0
  init_batches = None
  if batch_offset:
    init_batches = pretrain_batches(0)
    state = update.init_state(config, network, optimizer, config.data.image_size,
                              first_batch=next(init_batches))
  else:
    first = next(input_pipeline.eval_batches(
        config.data, split=config.data.train_split,
        global_batch_size=min(settings.batch_size, num_train), process_index=0,
        process_count=1, local_device_count=1))
    state = update.init_state(config, network, optimizer, config.data.image_size,
                              images=first['images'][0][first['mask'][0]])
  restored = checkpointer.restore_latest(template=state)
  start_step = 0
  if restored is not None:
    state = update.TrainState(**restored[0])
    start_step = int(restored[1]['step'])
    metric_writers.console(f'resumed from {checkpointer.directory}/{start_step}')
  checkpointing.save_config(workdir, config)
  writer = metric_writers.MetricWriter(workdir)
  total = settings.total_steps
  metric_writers.console(
      f'BYOL {config.model.encoder} x{config.model.width_multiplier} on '
      f'{config.data.dataset} ({num_train} train examples, {num_classes} classes): '
      f'{total} steps of batch {settings.batch_size} on {jax.device_count()} devices, '
      f'warmup {settings.warmup_steps}, peak lr '
      f'{settings.base_lr * settings.batch_size / 256:.4g}')

  def evaluate_and_log(step, host_state):
    t = time.time()
    metrics = run_evaluation(config, features_fn, update.replicate(host_state), num_classes)
    writer.write(step, 'eval', metrics)
    metric_writers.console(
        f'eval at step {step} on {config.data.eval_split} ({time.time() - t:.0f}s): '
        + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items() if k != 'num_examples'))
    return metrics

  def position(step):
    return input_position(step + batch_offset, settings.batch_size, num_train)

  def save(step, host_state):
    checkpointer.save(step, host_state, position(step))

  initial_metrics = None
  if start_step == 0 and config.evaluation.at_start:
    initial_metrics = evaluate_and_log(0, state)

  if init_batches is None or start_step > 0:
    init_batches = pretrain_batches(start_step + batch_offset)
  batches = input_pipeline.prefetch_to_device(init_batches)
  del init_batches
  pstate = update.replicate(state)
  del state
  max_this_run = training.get('max_steps_per_run', 0) or total
  stop_step = min(total, start_step + max_this_run)
  pending = []  # per-step metrics on device, fetched at the next log step
  window_start, data_wait = time.time(), 0.
  step = start_step
  with PreemptionWatcher() as preemption:
    while step < stop_step:
      t = time.time()
      batch = next(batches)
      data_wait += time.time() - t
      pstate, metrics = p_update(pstate, batch)
      pending.append((step + 1, metrics))
      step += 1
      last = step == stop_step
      stopping = preemption.event.is_set()
      checkpoint_due = step % training.checkpoint_every == 0 or last or stopping
      if step % training.log_every == 0 or last or stopping or checkpoint_due:
        # Checked before any save, so a diverged state is never checkpointed.
        host = [(s, jax.tree.map(lambda x: float(x[0]), m)) for s, m in jax.device_get(pending)]
        pending = []
        bad = next((s for s, m in host if not np.isfinite(m['loss'])), None)
        if bad is not None:
          writer.close()
          checkpointer.close()
          raise NonFiniteLossError(
              f'the loss became non-finite at step {bad} ({host[-1][1]["loss"]}); the last '
              f'good checkpoint is {checkpointer.latest_step()} in {checkpointer.directory}. '
              'Lower optimizer.base_lr or check the data.')
        elapsed = time.time() - window_start
        rate = len(host) * settings.batch_size / elapsed
        scalars = dict(host[-1][1], images_per_sec=rate,
                       data_wait_fraction=data_wait / elapsed, **position(step))
        writer.write(step, 'train', scalars)
        metric_writers.console(metric_writers.progress_line(
            step, total, scalars, rate, data_wait / elapsed,
            (total - step) * elapsed / len(host)))
        window_start, data_wait = time.time(), 0.
      eval_due = training.eval_every and step % training.eval_every == 0 and not last
      if checkpoint_due or eval_due:
        host_state = update.unreplicate(pstate)
        if checkpoint_due:
          save(step, host_state)
        if eval_due:
          evaluate_and_log(step, host_state)
      if stopping:
        checkpointer.close()
        writer.close()
        metric_writers.console(f'preempted: checkpoint at step {step} written; exiting')
        return {'preempted_at_step': step}

  checkpointer.wait()
  final = {'stopped_at_step': step}
  if step >= total:
    final = evaluate_and_log(step, update.unreplicate(pstate))
    if initial_metrics is not None:
      metric_writers.console(
          f'final at step {step}: kNN top-1 {final.get("knn_top1_accuracy", float("nan")):.4f}'
          f' (at initialisation {initial_metrics.get("knn_top1_accuracy", float("nan")):.4f}),'
          f' online classifier top-1 {final["top1_accuracy"]:.4f} (at initialisation '
          f'{initial_metrics["top1_accuracy"]:.4f})')
      final = dict(final, **{f'initial_{k}': v for k, v in initial_metrics.items()})
  checkpointer.close()
  writer.close()
  return final


def _initialize_distributed() -> None:
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif _MULTIHOST.value:
    jax.distributed.initialize()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  metric_writers.quiet_library_logs()
  _initialize_distributed()
  config = _CONFIG.value
  if config is None:
    from byol_jax import demo_config
    config = demo_config.get_config()
  workdir = _WORKDIR.value
  if not workdir:
    raise app.UsageError('--workdir is required (checkpoints, metrics and logs go there).')
  train_and_evaluate(config, workdir)


def run() -> None:
  """Console-script entry point (`byol-jax-train`)."""
  app.run(main)


if __name__ == '__main__':
  run()
