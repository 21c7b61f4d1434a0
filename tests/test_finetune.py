"""Fine-tuning: class-balanced reproducible subsets, subset splits, the sweep end to end."""

import json

import numpy as np
import pytest

from byol_jax import finetune
from byol_jax import input_pipeline
from byol_jax import networks
from test_linear_eval import load_config, small_demo
from test_official_import import synthetic_pretrained, tiny_model


def test_subset_is_class_balanced_and_reproducible():
  labels = np.repeat(np.arange(4), [200, 100, 30, 4])
  np.random.default_rng(0).shuffle(labels)
  subset = finetune.class_balanced_subset(labels, 0.1, seed=3)
  assert np.array_equal(subset, np.unique(subset))  # sorted, no repeats
  assert np.bincount(labels[subset]).tolist() == [20, 10, 3, 1]  # >= 1 per class
  assert np.array_equal(subset, finetune.class_balanced_subset(labels, 0.1, seed=3))
  assert not np.array_equal(subset, finetune.class_balanced_subset(labels, 0.1, seed=4))
  assert np.array_equal(finetune.class_balanced_subset(labels, 1.0, seed=3),
                        np.arange(len(labels)))
  with pytest.raises(ValueError, match='label_fraction'):
    finetune.class_balanced_subset(labels, 0., seed=3)


def test_subset_split_reads_exactly_the_chosen_examples():
  config = small_demo(load_config('finetune', 'demo'))
  data = config.data
  data.train_split = 'train[16:96]+train[200:240]'  # positions span two ranges
  everything = next(input_pipeline.eval_batches(data, split=data.train_split,
                                                global_batch_size=128))
  images = everything['images'].reshape((-1, 16, 16, 3))[:120]
  labels = everything['labels'].reshape(-1)[:120]
  positions = np.array([0, 1, 2, 5, 79, 80, 81, 119])
  split = finetune.subset_split(data, data.train_split, positions)
  assert split == 'train[16:19]+train[21:22]+train[95:96]+train[200:202]+train[239:240]'
  assert input_pipeline.num_examples(data, split) == len(positions)
  subset = next(input_pipeline.eval_batches(data, split=split, global_batch_size=8))
  np.testing.assert_array_equal(subset['labels'].reshape(-1), labels[positions])
  np.testing.assert_array_equal(subset['images'].reshape((-1, 16, 16, 3)), images[positions])


def test_finetuning_sweep_end_to_end(tmp_path):
  config = small_demo(load_config('finetune', 'demo'))
  config.label_fraction = 0.5
  config.optimizer.base_lrs = (0.05, 0.01)
  config.training.update(batch_size=32, epochs_grid=(1.,))
  pretrained = synthetic_pretrained(tiny_model())
  results = finetune.evaluate(config, str(tmp_path), pretrained=pretrained)
  assert json.loads((tmp_path / 'results.json').read_text())['status'] == 'done'
  class_sizes = np.bincount(finetune.split_labels(config.data, 'train[:320]', 64))
  expected = [max(1, round(0.5 * n)) for n in class_sizes]
  assert results['labels']['per_class'] == expected
  assert results['num_train_examples'] == sum(expected)
  assert len(results['sweep']) == 2
  assert all(r['steps'] == sum(expected) // 32 and r['validation']['num_examples'] == 64
             for r in results['sweep'])
  best = max(r['validation']['top1_accuracy'] for r in results['sweep'])
  assert results['selected']['validation']['top1_accuracy'] == best
  assert results['test']['split'] == 'test' and results['test']['num_examples'] == 64


def test_whole_network_trains_with_bn_in_training_mode():
  config = small_demo(load_config('finetune', 'demo'))
  pretrained = synthetic_pretrained(tiny_model())
  network = finetune.make_network(pretrained.config.model, 10, None)
  train_step = finetune.make_train_step(network, 0.9)
  params, state, loss = finetune.train_one(config, pretrained, 10, config.data.train_split,
                                           0.05, 3, train_step, 'test')
  assert np.isfinite(loss)
  conv = 'tiny_res_net/~/initial_conv'
  assert not np.allclose(params[conv]['w'], pretrained.online_params[conv]['w'])
  bn_mean = 'tiny_res_net/~/initial_batchnorm/~/mean_ema'
  assert state[bn_mean]['counter'] == pretrained.online_state[bn_mean]['counter'] + 3
  assert finetune.HEAD in params and params[finetune.HEAD]['w'].shape == (
      networks.representation_size('tiny', 1.), 10)
