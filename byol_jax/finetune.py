r"""Fine-tuning of the whole network, on all labels or a class-balanced fraction of them.

  python -m byol_jax.finetune --config=configs/finetune.py[:preset] --workdir=<dir> \
      --config.pretrained=<workdir | step dir | official .pkl | .npz> \
      [--config.label_fraction=0.1]

The paper's semi-supervised protocol (spec 8.2, C.1): start from the pretrained encoder
plus a fresh `Linear(num_classes)`, train everything with SGD, Nesterov momentum 0.9, no
weight decay, cosine lr without warmup, on random crop + flip; BN in training mode with
per-device statistics as the official code (`bn_sync=True`: synchronised over all
devices); sweep lr {0.01, 0.02, 0.05, 0.1, 0.005} x epochs {30, 50}, select on the
validation split and report only the selected run on the test split. Each
configuration is a separate run from the same pretrained weights. `lr_scaling` as in
linear evaluation (the paper does not say whether its lrs are per 256 examples [U]).

Labels: `label_fraction` < 1 keeps `round(fraction * n_c)` (at least one) examples of
every class c of the training split, drawn with `subset_seed` (reproducible, sorted), as
the paper's own subsets of Figure 4. For Table 2 (the SimCLR 1%/10% ImageNet subsets)
use the TFDS `imagenet2012_subset/1pct` or `/10pct` dataset instead (preset
`imagenet_1pct` / `imagenet_10pct`; label_fraction 1).

The encoder runs in float32 here whatever the pretraining precision.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import haiku as hk
import jax
import ml_collections
import numpy as np
import optax

from byol_jax import checkpointing
from byol_jax import evaluation
from byol_jax import input_pipeline
from byol_jax import linear_eval
from byol_jax import losses
from byol_jax import metric_writers
from byol_jax import networks
from byol_jax import update

AXIS = update.AXIS_NAME
HEAD = 'finetune_classifier'


# ----------------------------------------------------------- label subset ---

def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted positions: round(fraction * n_c) (>= 1) random examples of every class c."""
  labels = np.asarray(labels)
  if not 0 < fraction <= 1:
    raise ValueError(f'label_fraction={fraction!r} must be in (0, 1].')
  if fraction == 1:
    return np.arange(len(labels))
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    count = max(1, int(round(fraction * len(members))))
    chosen.append(rng.permutation(members)[:count])
  return np.sort(np.concatenate(chosen))


def split_labels(data: ml_collections.ConfigDict, split: str, batch_size: int) -> np.ndarray:
  """Labels of `split` in order (one pass over the split; decodes the images)."""
  labels = []
  for batch in input_pipeline.eval_batches(data, split=split, global_batch_size=batch_size):
    keep = batch['mask'].reshape(-1).astype(bool)
    labels.append(batch['labels'].reshape(-1)[keep])
  return np.concatenate(labels)


def subset_split(data: ml_collections.ConfigDict, split: str, positions: np.ndarray) -> str:
  """A TFDS split string selecting `positions` (indices into `split`), runs merged."""
  # input_pipeline resolves split strings to absolute (split, start, stop) ranges; no
  # public function exposes them yet.
  ranges = input_pipeline._source(data).resolve(split)  # pylint: disable=protected-access
  offsets = np.cumsum([0] + [r.stop - r.start for r in ranges])
  positions = np.asarray(positions, np.int64)
  if len(positions) and (positions.min() < 0 or positions.max() >= offsets[-1]):
    raise ValueError(f'subset positions out of range for {split!r} ({offsets[-1]} examples).')
  which = np.searchsorted(offsets, positions, side='right') - 1
  parts = []  # [split name, start, stop], consecutive examples merged into one slice
  for r, position in zip(which, positions):
    name, index = ranges[r].split, int(ranges[r].start + position - offsets[r])
    if parts and parts[-1][0] == name and parts[-1][2] == index:
      parts[-1][2] = index + 1
    else:
      parts.append([name, index, index + 1])
  return '+'.join(f'{name}[{start}:{stop}]' for name, start, stop in parts)


def training_split(config: ml_collections.ConfigDict) -> tuple[str, dict]:
  """The training split (the subset when label_fraction < 1) and a description."""
  data = config.data
  if config.label_fraction == 1:
    return data.train_split, dict(label_fraction=1.0)
  labels = split_labels(data, data.train_split, linear_eval.eval_batch_size(config))
  positions = class_balanced_subset(labels, config.label_fraction, config.subset_seed)
  counts = np.bincount(labels[positions], minlength=int(labels.max()) + 1)
  metric_writers.progress('label subset: %d of %d examples (fraction %g, seed %d), per class %s',
                          len(positions), len(labels), config.label_fraction, config.subset_seed,
                          counts.tolist())
  return subset_split(data, data.train_split, positions), dict(
      label_fraction=float(config.label_fraction), subset_seed=int(config.subset_seed),
      num_examples=int(len(positions)), per_class=counts.tolist())


# ---------------------------------------------------------------- network ---

def make_network(model_config: ml_collections.ConfigDict, num_classes: int,
                 cross_replica_axis: Optional[str]) -> hk.TransformedWithState:
  """Encoder (official names, float32) + Linear head: apply(params, state, images,
  is_training) -> ({'embedding', 'logits'}, state)."""
  bn = networks.BNConfig(decay_rate=model_config.bn_decay, eps=model_config.bn_eps,
                         cross_replica_axis=cross_replica_axis)

  def forward(images, is_training: bool):
    embedding = networks.encoder_from_config(model_config, bn)(
        networks.normalize_images(images), is_training)
    return {'embedding': embedding,
            'logits': hk.Linear(num_classes, name=HEAD)(embedding)}

  return hk.without_apply_rng(hk.transform_with_state(forward))


def initial_params(pretrained: checkpointing.Pretrained, num_classes: int,
                   seed: int) -> tuple[dict, dict]:
  """Pretrained encoder params/state plus a fresh head (hk.Linear's default init)."""
  model = pretrained.config.model
  root = networks.ENCODERS[model.encoder].module_name
  dim = networks.representation_size(model.encoder, model.width_multiplier)
  head = linear_eval.init_heads(1, dim, num_classes, seed)
  params = {m: dict(v) for m, v in pretrained.online_params.items()
            if m == root or m.startswith(root + '/')}
  params[HEAD] = {k: np.asarray(v[0]) for k, v in head.items()}
  state = {m: dict(v) for m, v in pretrained.online_state.items()
           if m == root or m.startswith(root + '/')}
  return params, state


def make_train_step(network, momentum: float):
  """pmapped SGD-Nesterov step over the whole network, BN in training mode.

  (params, state, trace, images, labels, lr) -> (params, state, trace, loss); the lr
  is an input so one compiled step serves every run of the sweep.
  """
  trace = optax.trace(decay=momentum, nesterov=True)  # optax.sgd's update, lr applied below

  def step_fn(params, state, opt_state, images, labels, lr):
    def loss_fn(p):
      out, new_state = network.apply(p, state, images, True)
      return losses.softmax_cross_entropy(out['logits'], labels), new_state
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = jax.lax.pmean(grads, AXIS)
    direction, opt_state = trace.update(grads, opt_state)
    params = jax.tree.map(lambda p, d: p - lr * d, params, direction)
    return params, state, opt_state, jax.lax.pmean(loss, AXIS)

  return trace.init, jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0, 1, 2))


def train_one(config, pretrained, num_classes: int, split: str, peak: float,
              num_steps: int, train_step, name: str) -> tuple[dict, dict, float]:
  """One fine-tuning run; returns host params, state (device 0) and the last loss."""
  params, state = initial_params(pretrained, num_classes, config.seed)
  init_opt, step_fn = train_step
  opt_state = init_opt(params)
  lrs = peak * np.asarray(linear_eval.cosine_factor(np.arange(num_steps), num_steps),
                          np.float32)
  params, state, opt_state = update.replicate((params, state, opt_state))
  batches = input_pipeline.prefetch_to_device(input_pipeline.linear_train_batches(
      config.data, split=split, global_batch_size=config.training.batch_size,
      seed=config.seed))
  progress = linear_eval.Progress(name, num_steps, config.training.log_every)
  loss = None
  for step in range(num_steps):
    batch = next(batches)
    params, state, opt_state, loss = step_fn(params, state, opt_state, batch['images'],
                                             batch['labels'], update.replicate(lrs[step]))
    if progress.due(step + 1):
      loss_value = float(loss[0])
      if not np.isfinite(loss_value):
        raise FloatingPointError(f'{name}: the loss is {loss_value} at step {step + 1}; '
                                 'lower the learning rate.')
      progress(step + 1, f'loss {loss_value:.4f}')
  return update.unreplicate(params), update.unreplicate(state), float(loss[0])


def split_metrics(config, data, split: str, features_fn, params, state) -> dict:
  """Top-1/top-5/loss of the fine-tuned network on `split` (centre crops, inference BN)."""
  replicated = update.replicate((params, state))
  features = linear_eval.split_features(data, split, linear_eval.eval_batch_size(config),
                                        features_fn, *replicated)
  metrics = evaluation.classifier_metrics(features)
  return dict(top1_accuracy=metrics['top1_accuracy'],
              top5_accuracy=metrics['top5_accuracy'], loss=metrics['classif_loss'],
              num_examples=metrics['num_examples'], split=split)


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             pretrained: Optional[checkpointing.Pretrained] = None) -> dict:
  """The lr x epochs sweep; writes `<workdir>/results.json` after every run."""
  validate_config(config)
  pretrained = linear_eval.load_encoder_source(config, pretrained)
  data = config.data
  num_classes = input_pipeline.num_classes(data)
  split, subset = training_split(config)
  num_train = input_pipeline.num_examples(data, split)
  if num_train < config.training.batch_size:
    raise ValueError(f'the training set has {num_train} examples, fewer than '
                     f'training.batch_size={config.training.batch_size}; lower the batch.')
  network = make_network(pretrained.config.model, num_classes,
                         AXIS if config.bn_sync else None)
  train_step = make_train_step(network, config.optimizer.momentum)
  features_fn = evaluation.make_features_fn(network)
  results = dict(protocol='finetune', pretrained=dict(
      source=pretrained.source, step=pretrained.step,
      model=pretrained.config.model.to_dict(),
      random_init=bool(config.get('random_init', False))),
      config=json.loads(config.to_json_best_effort()), num_classes=num_classes,
      labels=subset, num_train_examples=num_train, sweep=[], status='training')
  best = None
  for epochs in config.training.epochs_grid:
    for base_lr in config.optimizer.base_lrs:
      peak = linear_eval.peak_lr(base_lr, config.training.batch_size,
                                 config.optimizer.lr_scaling)
      steps = linear_eval.total_steps(
          ml_collections.ConfigDict(dict(epochs=epochs, batch_size=config.training.batch_size,
                                         total_steps=-1)), num_train)
      name = f'finetune lr {base_lr:g} x {epochs:g} epochs'
      params, state, loss = train_one(config, pretrained, num_classes, split, peak, steps,
                                      train_step, name)
      run = dict(base_lr=float(base_lr), peak_lr=float(peak), epochs=float(epochs),
                 steps=steps, final_train_loss=loss)
      run['validation'] = split_metrics(config, linear_eval.validation_data(data),
                                        data.eval_split, features_fn, params, state)
      results['sweep'].append(run)
      if linear_eval.select_best(results['sweep'],
                                 config.evaluation.selection_metric) == len(results['sweep']) - 1:
        best = (params, state)
      metric_writers.progress('%s: validation %s', name, run['validation'])
      linear_eval.write_results(workdir, results)
  index = linear_eval.select_best(results['sweep'], config.evaluation.selection_metric)
  results['selected'] = dict(results['sweep'][index], selection=dict(
      index=index, metric=config.evaluation.selection_metric, on='validation'))
  results['test'] = (split_metrics(config, data, data.test_split, features_fn, *best)
                     if data.test_split else None)
  results['status'] = 'done'
  path = linear_eval.write_results(workdir, results)
  metric_writers.progress('selected %s; test %s; written to %s', results['selected'],
                          results['test'], path)
  return results


def validate_config(config: ml_collections.ConfigDict) -> None:
  errors = []
  if not config.data.eval_split:
    errors.append('data.eval_split is empty: the sweep selects on a validation split.')
  elif (config.data.eval_split == config.data.test_split and
        linear_eval.validation_data(config.data).dataset == config.data.dataset):
    errors.append(f'data.eval_split and data.test_split are both {config.data.eval_split!r}: '
                  'selecting on the reported split overstates the result.')
  if not config.training.epochs_grid or any(e <= 0 for e in config.training.epochs_grid):
    errors.append(f'training.epochs_grid={config.training.epochs_grid!r} must be positive.')
  if not config.optimizer.base_lrs or any(lr <= 0 for lr in config.optimizer.base_lrs):
    errors.append(f'optimizer.base_lrs={config.optimizer.base_lrs!r} must be positive.')
  if config.optimizer.lr_scaling not in linear_eval.LR_SCALINGS:
    errors.append(f'optimizer.lr_scaling={config.optimizer.lr_scaling!r}: use one of '
                  f'{linear_eval.LR_SCALINGS}.')
  if config.training.batch_size % jax.device_count():
    errors.append(f'training.batch_size={config.training.batch_size} must be a multiple of '
                  f'the {jax.device_count()} devices.')
  if not 0 < config.label_fraction <= 1:
    errors.append(f'label_fraction={config.label_fraction!r} must be in (0, 1].')
  if config.evaluation.selection_metric not in linear_eval.SELECTION_METRICS:
    errors.append(f'evaluation.selection_metric={config.evaluation.selection_metric!r}: '
                  f'use one of {linear_eval.SELECTION_METRICS}.')
  if errors:
    raise ValueError('invalid fine-tuning config:\n  ' + '\n  '.join(errors))


def run(argv: Optional[Sequence[str]] = None) -> None:
  """Console entry point."""
  linear_eval.cli_main(evaluate, 'configs/finetune.py', argv)


if __name__ == '__main__':
  run()
