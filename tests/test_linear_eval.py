"""Linear evaluation: the head learns, the sweep selects on validation only, both paths run."""

import importlib.util
import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from byol_jax import evaluation
from byol_jax import linear_eval
from test_official_import import synthetic_pretrained, tiny_model

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def load_config(name: str, preset: str) -> ml_collections.ConfigDict:
  """configs/<name>.py:get_config(preset), as --config=configs/<name>.py:<preset> does."""
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def small_demo(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The demo preset shrunk to seconds: 16 px, 320 train / 64 validation / 64 test."""
  data = config.data
  data.image_size = 16
  data.demo_train_examples, data.demo_test_examples = 384, 64
  data.train_split, data.eval_split, data.test_split = 'train[:320]', 'train[320:]', 'test'
  config.evaluation.batch_size = 64
  return config


def _features(x, y):
  return evaluation.Features(embeddings=np.asarray(x, np.float32),
                             labels=np.asarray(y, np.int32),
                             logits=np.zeros((len(y), 1), np.float32))


def test_head_learns_a_linearly_separable_problem():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 512)
  centres = 3. * np.eye(4, 8)
  x = centres[labels] + 0.3 * rng.standard_normal((512, 8))
  config = ml_collections.ConfigDict(dict(
      seed=0, training=dict(batch_size=64, log_every=10), optimizer=dict(momentum=0.9)))
  peaks = [0.1, 0.01]
  heads, final_losses = linear_eval.train_heads_on_features(
      config, x[None].astype(np.float32), labels[None], 4, peaks, num_steps=80)
  metrics = linear_eval.heads_metrics(heads, _features(x, labels))
  assert metrics[0]['top1_accuracy'] == 1.0
  assert final_losses[0] < final_losses[1] < np.log(4)  # both learn; the larger lr more


def test_sweep_selects_on_validation_never_on_test():
  """Head 0 is right on validation and wrong on test, head 1 the opposite."""
  heads = {'w': np.stack([np.eye(2), np.eye(2)[::-1]]).astype(np.float32),
           'b': np.zeros((2, 2), np.float32)}
  labels = np.arange(64) % 2
  validation = _features(np.eye(2)[labels], labels)
  test = _features(np.eye(2)[1 - labels], labels)
  tested = []

  def test_fn(head):
    tested.append(head)
    return linear_eval.heads_metrics(head, test)[0]

  sweep = [dict(base_lr=0.1), dict(base_lr=0.2)]
  report = linear_eval.sweep_report(heads, sweep, validation, test_fn, 'top1_accuracy')
  assert report['selected']['selection'] == dict(index=0, metric='top1_accuracy',
                                                 on='validation')
  assert [r['validation']['top1_accuracy'] for r in report['sweep']] == [1.0, 0.0]
  assert len(tested) == 1 and np.array_equal(tested[0]['w'][0], np.eye(2))
  assert report['test']['top1_accuracy'] == 0.0  # reported, not used for the choice
  with pytest.raises(ValueError, match='no validation split'):
    linear_eval.sweep_report(heads, sweep, None, test_fn, 'top1_accuracy')


def test_config_refuses_selecting_on_the_test_split():
  config = load_config('linear_eval', 'demo')
  config.data.eval_split = config.data.test_split
  with pytest.raises(ValueError, match='both'):
    linear_eval.validate_config(config)
  config = load_config('linear_eval', 'demo')
  config.optimizer.lr_scaling = 'sqrt'
  with pytest.raises(ValueError, match='lr_scaling'):
    linear_eval.validate_config(config)


@pytest.mark.parametrize('fast', [True, False])
def test_protocol_end_to_end_on_demo(tmp_path, fast):
  config = small_demo(load_config('linear_eval', 'demo'))
  config.optimizer.base_lrs = (0.4, 0.05)
  config.training.update(batch_size=64, epochs=2.)
  config.fast_features, config.feature_epochs = fast, 2
  pretrained = synthetic_pretrained(tiny_model())
  results = linear_eval.evaluate(config, str(tmp_path), pretrained=pretrained)
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  assert on_disk['status'] == 'done'
  assert on_disk['selected'] == results['selected']
  assert results['total_steps'] == 2 * 320 // 64
  assert [r['peak_lr'] for r in results['sweep']] == [0.4 * 64 / 256, 0.05 * 64 / 256]
  assert all(r['validation']['num_examples'] == 64 for r in results['sweep'])
  assert results['selected']['selection']['on'] == 'validation'
  assert results['test']['split'] == 'test' and results['test']['num_examples'] == 64
  assert all(np.isfinite(r['final_train_loss']) for r in results['sweep'])
  assert jax.device_count() == 2  # conftest: the pmapped path ran on 2 devices
