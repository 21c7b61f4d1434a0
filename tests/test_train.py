"""The training application: config checks, logs, checkpoints, exact resume, preemption."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from byol_jax import checkpointing
from byol_jax import config as config_lib
from byol_jax import demo_config
from byol_jax import train
from conftest import REPO
from conftest import tiny_config

TOTAL_STEPS = 4


def small_demo_config():
  config = demo_config.get_config()
  config.data.demo_train_examples = 64
  config.data.demo_test_examples = 32
  config.data.image_size = 16
  config.model = tiny_config(16).model
  config.training.batch_size = 16
  config.training.total_steps = TOTAL_STEPS
  config.optimizer.warmup_steps = 1
  config.training.log_every = 1
  config.training.checkpoint_every = 2
  config.evaluation.batch_size = 16
  config.evaluation.knn_k = 5
  return config


def _final_state(workdir):
  checkpointer = checkpointing.Checkpointer(workdir, async_save=False)
  state, meta = checkpointer.restore(checkpointer.latest_step())
  return state, meta


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  final = train.train_and_evaluate(small_demo_config(), workdir)
  return workdir, final


def test_run_writes_metrics_config_tensorboard_and_checkpoints(full_run):
  workdir, final = full_run
  assert 0. <= final['knn_top1_accuracy'] <= 1. and 'initial_knn_top1_accuracy' in final
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  train_records = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train_records] == list(range(1, TOTAL_STEPS + 1))
  for key in ('loss', 'repr_loss', 'classif_loss', 'top1_accuracy', 'top5_accuracy',
              'learning_rate', 'tau', 'images_per_sec', 'projection_std',
              'data_wait_fraction', 'epoch', 'examples_consumed'):
    assert all(key in r for r in train_records), key
  evals = [r for r in records if r['split'] == 'eval']
  assert [r['step'] for r in evals] == [0, TOTAL_STEPS]
  for key in ('top1_accuracy', 'top5_accuracy', 'knn_top1_accuracy', 'num_examples'):
    assert key in evals[-1]
  assert evals[-1]['num_examples'] == 32  # every eval example exactly once
  config = json.load(open(os.path.join(workdir, 'config.json')))
  assert config['model']['encoder'] == 'tiny'
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  assert sorted(checkpointing.Checkpointer(workdir).all_steps()) == [2, 4]
  state, meta = _final_state(workdir)
  assert int(state['step']) == TOTAL_STEPS and meta['examples_consumed'] == 64


def test_stop_and_resume_is_bit_identical(full_run, tmp_path):
  workdir = str(tmp_path)
  config = small_demo_config()
  config.training.max_steps_per_run = 3  # stops (with a checkpoint) as a preemption would
  assert train.train_and_evaluate(config, workdir) == {'stopped_at_step': 3}
  assert checkpointing.Checkpointer(workdir).latest_step() == 3
  train.train_and_evaluate(config, workdir)  # resumes at 3, runs to the end
  resumed, _ = _final_state(workdir)
  uninterrupted, _ = _final_state(full_run[0])
  leaves = lambda s: jax.tree_util.tree_flatten_with_path(s)[0]
  for (path, a), (_, b) in zip(leaves(uninterrupted), leaves(resumed)):
    assert np.array_equal(a, b), jax.tree_util.keystr(path)


def test_official_behaviour_run_resumes_bit_identically(tmp_path):
  """config.use_official_behaviour: BN init from the first batch (consumed, not trained
  on), the official augmentation key chain; stopping and resuming changes nothing."""
  def official_config():
    config = small_demo_config()
    config.evaluation.at_start = False
    config.evaluation.knn = False  # the final evaluation is not what this test is about
    config_lib.use_official_behaviour(config)
    return config

  assert official_config().model.zero_init_last_bn is False  # basic blocks: Haiku's rule
  full, parts = str(tmp_path / 'full'), str(tmp_path / 'parts')
  train.train_and_evaluate(official_config(), full)
  config = official_config()
  config.training.max_steps_per_run = 3
  assert train.train_and_evaluate(config, parts) == {'stopped_at_step': 3}
  train.train_and_evaluate(official_config(), parts)
  (a, meta), (b, _) = _final_state(full), _final_state(parts)
  leaves = lambda s: jax.tree_util.tree_flatten_with_path(s)[0]
  for (path, x), (_, y) in zip(leaves(a), leaves(b)):
    assert np.array_equal(x, y), jax.tree_util.keystr(path)
  # Two BN calls (one per view) per step.
  counters = {int(v) for p, v in leaves(a['online_state']) if 'counter' in jax.tree_util.keystr(p)}
  assert counters == {2 * TOTAL_STEPS}
  assert meta['examples_consumed'] == (TOTAL_STEPS + 1) * 16  # the init batch included
  # The official loop key, PRNGKey(0) split once per step, in the non-partitionable
  # threefry bits of the JAX releases the official code ran on.
  def loop_key(partitionable):
    with jax.threefry_partitionable(partitionable):
      key = jax.random.PRNGKey(0)
      for _ in range(TOTAL_STEPS):
        key = jax.random.split(key)[1]
      return np.asarray(key)
  assert np.array_equal(np.asarray(a['rng']), loop_key(False))
  assert not np.array_equal(loop_key(False), loop_key(True))


def test_config_validation_names_bad_values():
  config = small_demo_config()
  config.training.batch_size = 15
  with pytest.raises(ValueError, match='batch_size=15 must be divisible by device_count'):
    config_lib.validate(config, device_count=2)
  config = small_demo_config()
  config.model.encoder = 'resnet9'
  with pytest.raises(ValueError, match="encoder='resnet9'"):
    config_lib.validate(config, device_count=1)
  config = small_demo_config()
  config.training.total_steps = -1
  config.training.epochs = 2
  config.optimizer.warmup_steps = -1
  config.optimizer.warmup_epochs = 3
  with pytest.raises(ValueError, match='warmup .* must be shorter than training'):
    config_lib.validate(config, device_count=1, num_train_examples=64)
  config.training.accumulation_steps = 0
  config.optimizer.base_lr = -1.
  with pytest.raises(ValueError) as error:
    config_lib.validate(config, device_count=1)
  assert 'accumulation_steps=0' in str(error.value) and 'base_lr=-1.0' in str(error.value)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
  config = small_demo_config()
  config.optimizer.base_lr = 1e35  # diverges within a few steps
  config.training.total_steps = 6
  with pytest.raises(train.NonFiniteLossError, match='non-finite at step'):
    train.train_and_evaluate(config, str(tmp_path))
  checkpointer = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  for step in checkpointer.all_steps():
    state, _ = checkpointer.restore(step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state['online_params'])
               if np.issubdtype(x.dtype, np.floating))


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  for step in (1, 2):
    checkpointer.save(step, {'w': np.full((4,), float(step), np.float32)}, {'epoch': 0})
  checkpointer.wait()
  step_dir = tmp_path / 'checkpoints' / '2' / 'state'
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(3)  # a damaged write
  state, meta = checkpointing.Checkpointer(str(tmp_path)).restore_latest(
      {'w': np.zeros((4,), np.float32)})
  assert meta['step'] == 1 and np.all(state['w'] == 1.)
  assert (tmp_path / 'checkpoints' / 'corrupt-2').exists()  # kept aside, not overwritten


def test_sigterm_writes_a_checkpoint_and_exits_zero(tmp_path):
  workdir = str(tmp_path)
  code = ('import sys; sys.path.insert(0, "tests"); import test_train, byol_jax.train as t;'
          'c = test_train.small_demo_config(); c.training.total_steps = 10000;'
          'c.evaluation.at_start = False; c.training.checkpoint_every = 10000;'
          f't.train_and_evaluate(c, {workdir!r})')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  process = subprocess.Popen([sys.executable, '-c', code], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 2:
      break
    time.sleep(0.5)
  assert process.poll() is None, process.communicate()[0].decode()[-3000:]
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=120)[0].decode()
  assert process.returncode == 0, output[-3000:]
  step = checkpointing.Checkpointer(workdir).latest_step()
  assert step is not None and step >= 2 and f'checkpoint at step {step}' in output
