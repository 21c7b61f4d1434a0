"""BYOL learns on real images: ~200 steps on a CIFAR-10 subset (needs ../shared)."""

import os
import tarfile

import jax
import numpy as np
import pytest

from byol_jax import evaluation
from byol_jax import input_pipeline
from byol_jax import prepare_folder
from byol_jax import update
from conftest import tiny_config

NUM_IMAGES = 2000   # 200 per class from the archive's train/<class>/ folders
STEPS = 200


def _subset_folder(archive, root):
  """Writes the first NUM_IMAGES / 10 images of each class as train/<class>/<n>.jpg."""
  per_class = {}
  with tarfile.open(archive) as tar:
    for member in tar:
      parts = member.name.split('/')
      if not member.isfile() or len(parts) < 3 or not parts[-1].endswith('.jpg'):
        continue
      split = 'train' if per_class.get(parts[-2], 0) < NUM_IMAGES // 10 * 0.8 else 'test'
      if per_class.get(parts[-2], 0) >= NUM_IMAGES // 10:
        continue
      per_class[parts[-2]] = per_class.get(parts[-2], 0) + 1
      target = os.path.join(root, split, parts[-2], parts[-1])
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with open(target, 'wb') as f:
        f.write(tar.extractfile(member).read())
      if len(per_class) == 10 and all(v >= NUM_IMAGES // 10 for v in per_class.values()):
        break


@pytest.mark.slow
def test_byol_learns_on_cifar10_subset(cifar_archive, tmp_path):
  _subset_folder(cifar_archive, tmp_path / 'images')
  prepare_folder.prepare(str(tmp_path / 'images'), 'cifar_subset', str(tmp_path / 'tfds'))
  config = tiny_config(image_size=32)
  config.data.dataset = 'cifar_subset'
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.train_split, config.data.eval_split = 'train', 'test'
  config.data.shuffle_buffer = NUM_IMAGES
  config.model.encoder = 'resnet18'
  config.model.width_multiplier = 0.125
  config.model.projector_hidden_size = 256
  config.model.predictor_hidden_size = 256
  config.model.projection_size = 64
  config.training.batch_size = 64
  config.training.total_steps = STEPS
  config.optimizer.warmup_steps = 20
  config.optimizer.base_lr = 16.0  # peak lr 4 at batch 64: LARS needs large lrs
  config.training.base_target_ema = 0.99

  num_train = input_pipeline.num_examples(config.data, 'train')
  settings = update.settings_from_config(config, num_train, num_classes=10)
  network, optimizer, update_fn = update.build(config, settings)
  step = update.pmap_update(update_fn)
  features_fn = evaluation.make_features_fn(network)
  first = next(input_pipeline.eval_batches(config.data, split='train', global_batch_size=64))
  state = update.init_state(config, network, optimizer, 32,
                            images=first['images'].reshape(-1, 32, 32, 3))

  def evaluate(host_state):
    replicated = update.replicate(host_state)
    run = lambda split: evaluation.extract_features(
        features_fn, replicated.online_params, replicated.online_state,
        input_pipeline.eval_batches(config.data, split=split, global_batch_size=200))
    train, test = run('train'), run('test')
    return (evaluation.knn_metrics(train, test, num_classes=10, k=20)['knn_top1_accuracy'],
            evaluation.classifier_metrics(test)['top1_accuracy'])

  initial_knn, _ = evaluate(state)
  batches = input_pipeline.prefetch_to_device(input_pipeline.pretrain_batches(
      config.data, global_batch_size=64, seed=0))
  pstate = update.replicate(state)
  history = []
  for _ in range(STEPS):
    pstate, metrics = step(pstate, next(batches))
    history.append(jax.tree.map(lambda x: float(x[0]), metrics))
  final_knn, classifier_top1 = evaluate(update.unreplicate(pstate))
  first_loss = np.mean([m['repr_loss'] for m in history[:20]])
  last_loss = np.mean([m['repr_loss'] for m in history[-20:]])
  std = history[-1]['projection_std']
  print(f'repr loss {first_loss:.3f} -> {last_loss:.3f}, projection std {std:.4f}, '
        f'online classifier top-1 {classifier_top1:.3f} (held out), '
        f'kNN {initial_knn:.3f} -> {final_knn:.3f}')
  assert last_loss < 0.8 * first_loss
  assert std > 0.3 / np.sqrt(64)        # uniform on the sphere: 1/sqrt(d); collapse: 0
  assert classifier_top1 > 0.13         # chance is 0.10 (400 held-out images)
  assert final_knn > initial_knn + 0.02  # the encoder itself improved
