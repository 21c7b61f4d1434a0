r"""Linear evaluation, the paper's protocol (spec 8.2, C.1), with a learning-rate sweep.

  python -m byol_jax.linear_eval --config=configs/linear_eval.py[:preset] \
      --workdir=<dir> --config.pretrained=<workdir | step dir | official .pkl | .npz>

The encoder is frozen (BN in inference mode, moving statistics of the checkpoint); a
fresh `Linear(num_classes)` with bias on the raw pooled representation is trained with
SGD, Nesterov momentum 0.9, no weight decay, a cosine lr from its peak to 0 without
warmup, on random crop + flip of `data.train_split`. The peak lr of each grid value is
`base_lr * batch / 256` (`optimizer.lr_scaling='linear'`, as the official code scales
its single 0.2; the paper does not say whether its grid {0.4, 0.3, 0.2, 0.1, 0.05} is
scaled, spec 14.2 [U]) or `base_lr` itself (`lr_scaling='none'`).

Every head of the grid is trained on the same batches in the same pass: the encoder is
frozen, so its features do not depend on the head, and one forward pass serves all of
them (vmapped over the lr axis), which equals separate runs with the same data order.
Each head is evaluated on `data.eval_split` (validation, centre crops); the best on
validation (`evaluation.selection_metric`) is then, and only then, evaluated on
`data.test_split`. The test split never takes part in the choice. Everything goes to
`<workdir>/results.json`.

Fast path (`fast_features=True`, small datasets): the frozen features of the training
split are computed once for `feature_epochs` random crop + flip passes (0: one pass of
centre crops, no augmentation), kept in memory, and the heads train on them, epoch e
using pass e mod feature_epochs in a fresh order. Same optimiser, schedule and steps.

The model comes from the checkpoint's own config; the data from this config's `data`
section, so a different dataset than pretraining is transfer, by config alone.
`random_init=True` evaluates the checkpoint's architecture at its initialisation (the
pretraining's step-0 online network: same config and seed, BN statistics of a first
batch), a baseline for what pretraining bought.

Helpers shared with fine-tuning and kNN (`load_encoder_source`, `encoder_features_fn`,
`split_features`, `peak_lr`, `select_best`, `write_results`) live here.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from byol_jax import checkpointing
from byol_jax import config as config_lib
from byol_jax import evaluation
from byol_jax import input_pipeline
from byol_jax import losses
from byol_jax import metric_writers
from byol_jax import networks
from byol_jax import official_import
from byol_jax import schedules
from byol_jax import update

AXIS = update.AXIS_NAME
LR_SCALINGS = ('linear', 'none')
SELECTION_METRICS = ('top1_accuracy', 'top5_accuracy')
RESULTS_FILE = 'results.json'


# ---------------------------------------------------------- shared pieces ---

EVAL_PRESETS = ('imagenet', 'cifar10', 'folder', 'demo')


def eval_data_config(preset: str) -> ml_collections.ConfigDict:
  """The `data` section of an evaluation preset (linear eval, fine-tuning, kNN).

  Three disjoint splits: train (fits the head), eval (validation: selects the lr),
  test (reported once, for the selected run). `eval_dataset` ('' = `dataset`) lets the
  validation split come from another dataset (e.g. the full ImageNet train set when
  training on a TFDS `imagenet2012_subset`).
  """
  data = config_lib.base_config().data
  data.eval_dataset = ''
  if preset == 'imagenet':  # paper C.1: local validation = last 10,009 train images
    data.train_split, data.eval_split, data.test_split = (
        'train[:-10009]', 'train[-10009:]', 'validation')
  elif preset == 'cifar10':  # paper Table 10: 45,000 / 5,000 / 10,000
    data.dataset = 'cifar10'
    data.train_split, data.eval_split, data.test_split = (
        'train[:-5000]', 'train[-5000:]', 'test')
    data.image_size = 32
  elif preset == 'folder':  # a prepare_folder dataset with a train split only
    data.dataset = 'my_images'
    data.data_dir = '~/tensorflow_datasets'
    data.train_split, data.eval_split, data.test_split = (
        'train[:-10000]', 'train[-10000:-5000]', 'train[-5000:]')
    data.image_size = 32
  elif preset == 'demo':
    data.dataset = 'demo'
    data.train_split, data.eval_split, data.test_split = (
        'train[:2048]', 'train[2048:]', 'test')
    data.image_size = 32
  else:
    raise ValueError(f'unknown preset {preset!r}: use one of {EVAL_PRESETS}.')
  return data


def validation_data(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data config the validation split is read from (`eval_dataset` if set)."""
  if not data.get('eval_dataset', ''):
    return data
  other = ml_collections.ConfigDict(data.to_dict())
  other.dataset = data.eval_dataset
  return other

def peak_lr(base_lr: float, batch_size: int, lr_scaling: str) -> float:
  """base_lr * B / 256 ('linear', official) or base_lr ('none')."""
  if lr_scaling == 'linear':
    return base_lr * batch_size / 256.
  if lr_scaling == 'none':
    return float(base_lr)
  raise ValueError(f'optimizer.lr_scaling={lr_scaling!r}: use one of {LR_SCALINGS}.')


def cosine_factor(step, total_steps: int):
  """1 at step 0, cosine to 0 at `total_steps`, no warmup (the official eval schedule)."""
  return schedules.learning_rate(step, base_lr=1., batch_size=256, total_steps=total_steps,
                                 warmup_steps=0)


def total_steps(training: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """`epochs * N // B` as the official code, unless training.total_steps is set."""
  if training.get('total_steps', -1) not in (-1, None):
    return int(training.total_steps)
  steps = schedules.steps_from_epochs(training.epochs, num_train_examples,
                                      training.batch_size)
  if steps < 1:
    raise ValueError(f'training.epochs={training.epochs} over {num_train_examples} examples '
                     f'at batch {training.batch_size} gives no step; raise the epochs or '
                     'lower the batch size.')
  return steps


def select_best(runs: Sequence[Mapping[str, Any]], metric: str) -> int:
  """Index of the run with the highest validation `metric` (first one on ties).

  Reads only `run['validation']`: test metrics cannot influence the choice.
  """
  if metric not in SELECTION_METRICS:
    raise ValueError(f'evaluation.selection_metric={metric!r}: use one of {SELECTION_METRICS}.')
  if not runs:
    raise ValueError('nothing to select from: the sweep is empty.')
  scores = [run['validation'][metric] for run in runs]
  return int(np.argmax(scores))


def write_results(workdir: str, results: Mapping[str, Any]) -> str:
  """Writes `<workdir>/results.json` atomically (process 0 only); returns the path."""
  path = os.path.join(workdir, RESULTS_FILE)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path + '.tmp', 'w') as f:
      json.dump(results, f, indent=2, sort_keys=True)
    os.replace(path + '.tmp', path)
  return path


def load_encoder_source(config: ml_collections.ConfigDict,
                        pretrained: Optional[checkpointing.Pretrained] = None
                        ) -> checkpointing.Pretrained:
  """The checkpoint named by `config.pretrained` (or the one given), or its init."""
  if pretrained is None:
    if not config.pretrained:
      raise ValueError('config.pretrained is empty: give --config.pretrained=<byol-jax '
                       'workdir, checkpoint step dir, official .pkl or exported .npz>.')
    pretrained = official_import.load_checkpoint(os.path.expanduser(config.pretrained))
  networks.validate_model_config(pretrained.config.model)
  if config.get('random_init', False):
    pretrained = initial_network(pretrained, config.data)
  return pretrained


def initial_network(pretrained: checkpointing.Pretrained,
                    data_config: ml_collections.ConfigDict,
                    num_bn_images: int = 256) -> checkpointing.Pretrained:
  """The pretraining's step-0 online network (its config and seed); BN statistics of the
  centre crops of the first `num_bn_images` of `data_config.train_split`, as the
  official initialisation from a first batch."""
  batch = next(input_pipeline.eval_batches(
      data_config, split=data_config.train_split,
      global_batch_size=num_bn_images - num_bn_images % jax.device_count()))
  images = batch['images'].reshape((-1,) + batch['images'].shape[2:])
  images = images[batch['mask'].reshape(-1).astype(bool)]
  config = pretrained.config
  network = networks.make_byol_network(config.model, num_classes=1, cross_replica_axis=AXIS)
  state = update.init_state(config, network, optax.identity(), data_config.image_size,
                            images=images)
  return checkpointing.Pretrained(
      config=config, online_params=jax.device_get(state.online_params),
      online_state=jax.device_get(state.online_state), step=0,
      source=f'initialisation of {pretrained.source} (seed {config.seed})')


def encoder_features_fn(model_config: ml_collections.ConfigDict):
  """pmapped (params, state, images) -> {'embedding', 'logits' (unused, [B, 1])},
  inference mode, in the shape `evaluation.extract_features` consumes."""
  encoder = networks.make_encoder_network(model_config)

  def features(params, state, images):
    embedding, _ = encoder.apply(params, state, images, False)
    return {'embedding': embedding, 'logits': jnp.zeros((embedding.shape[0], 1))}

  return jax.pmap(features, axis_name=AXIS)


def split_features(data_config: ml_collections.ConfigDict, split: str, batch_size: int,
                   features_fn, params, state) -> evaluation.Features:
  """Centre-crop features of every example of `split` (exact, in order)."""
  batches = input_pipeline.eval_batches(data_config, split=split,
                                        global_batch_size=batch_size)
  return evaluation.extract_features(features_fn, params, state, batches)


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
  """evaluation.batch_size rounded down to a multiple of the device count."""
  devices = jax.device_count()
  return max(devices, config.evaluation.batch_size // devices * devices)


class Progress:
  """Logs step, rate and time left every `every` steps of `total`."""

  def __init__(self, what: str, total: int, every: int):
    self.what, self.total, self.every = what, total, max(1, every)
    self.start = time.time()

  def due(self, step: int) -> bool:
    return step % self.every == 0 or step == self.total

  def __call__(self, step: int, message: str = '') -> None:
    elapsed = time.time() - self.start
    rate = step / elapsed if elapsed > 0 else float('nan')
    left = (self.total - step) / rate if rate > 0 else float('nan')
    metric_writers.progress('%s: step %d/%d (%.1f steps/s, %.0f s left) %s', self.what, step,
                            self.total, rate, left, message)


# ---------------------------------------------------------- linear heads ---

def init_heads(num_heads: int, dim: int, num_classes: int, seed: int) -> dict:
  """`num_heads` identical fresh hk.Linear(num_classes) heads: {'w': [L, D, C], 'b': [L, C]}."""
  linear = hk.transform(lambda x: hk.Linear(num_classes, name='linear_classifier')(x))
  params = linear.init(jax.random.PRNGKey(seed), jnp.zeros((1, dim)))['linear_classifier']
  return {k: jnp.broadcast_to(v, (num_heads,) + v.shape) for k, v in params.items()}


def head_logits(heads: Mapping[str, jax.Array], features: jax.Array) -> jax.Array:
  """[N, D] features -> [L, N, C] logits of every head."""
  return jnp.einsum('nd,ldc->lnc', features, heads['w']) + heads['b'][:, None, :]


def heads_loss(heads, features, labels) -> tuple[jax.Array, jax.Array]:
  """Sum over heads of each head's mean cross-entropy (independent gradients), per head."""
  per_head = jax.vmap(losses.softmax_cross_entropy, in_axes=(0, None))(
      head_logits(heads, features), labels)
  return jnp.sum(per_head), per_head


def make_head_step(peak_lrs: Sequence[float], num_steps: int, momentum: float,
                   axis_name: Optional[str]):
  """(heads, trace, features [B, D], labels [B], step) -> (heads, trace, losses [L]).

  SGD with Nesterov momentum (optax.sgd's update) and lr_l = peak_l * cosine(step);
  with `axis_name` the gradients are averaged over devices (global batch).
  """
  trace = optax.trace(decay=momentum, nesterov=True)
  peaks = jnp.asarray(peak_lrs, jnp.float32)

  def step_fn(heads, opt_state, features, labels, step):
    grads, per_head = jax.grad(heads_loss, has_aux=True)(
        heads, jax.lax.stop_gradient(features), labels)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      per_head = jax.lax.pmean(per_head, axis_name)
    direction, opt_state = trace.update(grads, opt_state)
    scale = -peaks * cosine_factor(step, num_steps)
    heads = jax.tree.map(
        lambda p, d: p + scale.reshape((-1,) + (1,) * (d.ndim - 1)) * d, heads, direction)
    return heads, opt_state, per_head

  return trace.init, step_fn


@jax.jit
def _metric_sums(heads, x, y, valid):
  """Per-head sums of top-1, top-5 and cross-entropy over the valid rows of a chunk."""
  logits = head_logits(heads, x)
  top1 = jax.vmap(losses.topk_correct, in_axes=(0, None, None))(logits, y, 1)
  top5 = jax.vmap(losses.topk_correct, in_axes=(0, None, None))(logits, y, 5)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[None, :, None], -1)[..., 0]
  return jnp.stack([jnp.sum(m * valid, axis=1) for m in (top1, top5, nll)])


def heads_metrics(heads: Mapping[str, Any], features: evaluation.Features,
                  chunk: int = 4096) -> list[dict[str, float]]:
  """Top-1, top-5 and mean cross-entropy of every head on a split (exact sums)."""
  n = features.labels.shape[0]
  if n == 0:
    raise ValueError('cannot evaluate on an empty split.')
  totals = np.zeros((3, heads['w'].shape[0]), np.float64)
  for start in range(0, n, chunk):
    x = np.zeros((chunk, features.embeddings.shape[1]), np.float32)
    y = np.zeros((chunk,), np.int32)
    valid = np.zeros((chunk,), np.float32)
    part = slice(start, min(start + chunk, n))
    size = part.stop - part.start
    x[:size], y[:size], valid[:size] = features.embeddings[part], features.labels[part], 1.
    totals += np.asarray(_metric_sums(heads, x, y, valid))
  return [dict(top1_accuracy=float(t1 / n), top5_accuracy=float(t5 / n), loss=float(l / n),
               num_examples=int(n)) for t1, t5, l in totals.T]


def take_head(heads: Mapping[str, Any], index: int) -> dict:
  return {k: np.asarray(v)[index:index + 1] for k, v in heads.items()}


# ------------------------------------------------------------- training ---

def train_heads_on_images(config, pretrained, num_classes: int, peaks: Sequence[float],
                          num_steps: int) -> tuple[dict, list[float]]:
  """The standard path: crops through the frozen encoder every step, all heads at once."""
  model_config = pretrained.config.model
  encoder = networks.make_encoder_network(model_config)
  dim = networks.representation_size(model_config.encoder, model_config.width_multiplier)
  init_trace, head_step = make_head_step(peaks, num_steps, config.optimizer.momentum, AXIS)

  def step_fn(heads, opt_state, params, state, images, labels, step):
    features, _ = encoder.apply(params, state, images, False)
    return head_step(heads, opt_state, features, labels, step)

  step_fn = jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0, 1))
  heads = init_heads(len(peaks), dim, num_classes, config.seed)
  opt_state = init_trace(heads)
  heads, opt_state, params, state = update.replicate(
      (heads, opt_state, pretrained.online_params, pretrained.online_state))
  batches = input_pipeline.prefetch_to_device(input_pipeline.linear_train_batches(
      config.data, split=config.data.train_split,
      global_batch_size=config.training.batch_size, seed=config.seed))
  progress = Progress('linear eval', num_steps, config.training.log_every)
  per_head = None
  for step in range(num_steps):
    batch = next(batches)
    step_array = update.replicate(np.int32(step))
    heads, opt_state, per_head = step_fn(heads, opt_state, params, state, batch['images'],
                                         batch['labels'], step_array)
    if progress.due(step + 1):
      progress(step + 1, _loss_message(peaks, np.asarray(per_head[0])))
  return update.unreplicate(heads), [float(x) for x in np.asarray(per_head[0])]


def _loss_message(peaks, per_head) -> str:
  return 'loss ' + ', '.join(f'lr {p:g}: {l:.4f}' for p, l in zip(peaks, per_head))


def training_features(config, pretrained, features_fn, params, state) -> tuple[np.ndarray, np.ndarray]:
  """Frozen features of the training split for the fast path.

  Returns embeddings [E, M, D] and labels [E, M]: E = feature_epochs passes of random
  crop + flip (each the split less a remainder smaller than the batch), or E = 1 pass of
  centre crops when feature_epochs == 0.
  """
  data, split = config.data, config.data.train_split
  batch_size = eval_batch_size(config)
  if config.feature_epochs == 0:
    feats = split_features(data, split, batch_size, features_fn, params, state)
    return feats.embeddings[None], feats.labels[None]
  if config.feature_epochs < 0:
    raise ValueError(f'feature_epochs={config.feature_epochs} must be >= 0 (0: centre '
                     'crops, no augmentation).')
  num = input_pipeline.num_examples(data, split)
  batch_size = min(batch_size, num - num % jax.device_count())
  per_epoch = num // batch_size
  stream = input_pipeline.linear_train_batches(data, split=split,
                                               global_batch_size=batch_size, seed=config.seed)
  masked = ({'images': b['images'], 'labels': b['labels'],
             'mask': np.ones(b['labels'].shape, bool)} for b in stream)
  total = per_epoch * config.feature_epochs
  progress = Progress('feature passes', total, max(1, per_epoch))

  def counted(it: Iterator) -> Iterator:
    for i in range(total):
      yield next(it)
      if progress.due(i + 1):
        progress(i + 1)

  feats = evaluation.extract_features(features_fn, params, state, counted(masked))
  shape = (config.feature_epochs, -1)
  return (feats.embeddings.reshape(shape + feats.embeddings.shape[1:]),
          feats.labels.reshape(shape))


def train_heads_on_features(config, embeddings: np.ndarray, labels: np.ndarray,
                            num_classes: int, peaks: Sequence[float],
                            num_steps: int) -> tuple[dict, list[float]]:
  """The fast path: SGD of all heads over precomputed features, one jitted scan an epoch."""
  passes, per_pass, dim = embeddings.shape
  batch = config.training.batch_size
  steps_per_epoch = per_pass // batch
  if steps_per_epoch < 1:
    raise ValueError(f'training.batch_size={batch} exceeds the {per_pass} training features; '
                     'lower the batch size.')
  init_trace, head_step = make_head_step(peaks, num_steps, config.optimizer.momentum, None)

  @jax.jit
  def run_epoch(heads, opt_state, xs, ys, first_step):
    def body(carry, inputs):
      heads, opt_state, step = carry
      x, y = inputs
      heads, opt_state, per_head = head_step(heads, opt_state, x, y, step)
      return (heads, opt_state, step + 1), per_head
    (heads, opt_state, _), per_head = jax.lax.scan(body, (heads, opt_state, first_step),
                                                   (xs, ys))
    return heads, opt_state, per_head[-1]

  heads = init_heads(len(peaks), dim, num_classes, config.seed)
  opt_state = init_trace(heads)
  rng = np.random.default_rng(config.seed)
  progress = Progress('linear eval (features)', num_steps, config.training.log_every)
  step, epoch, per_head = 0, 0, None
  while step < num_steps:
    count = min(steps_per_epoch, num_steps - step)
    order = rng.permutation(per_pass)[:count * batch]
    xs = embeddings[epoch % passes][order].reshape(count, batch, dim)
    ys = labels[epoch % passes][order].reshape(count, batch)
    heads, opt_state, per_head = run_epoch(heads, opt_state, xs, ys, jnp.int32(step))
    step, epoch = step + count, epoch + 1
    progress(step, _loss_message(peaks, np.asarray(per_head)))
  return jax.device_get(heads), [float(x) for x in np.asarray(per_head)]


# ---------------------------------------------------------------- sweep ---

def sweep_report(heads: Mapping[str, Any], sweep: list[dict], validation: Optional[
    evaluation.Features], test_fn, metric: str) -> dict:
  """Evaluates every head on validation, selects one, evaluates only it on test.

  `sweep[i]` describes head i; `test_fn(head) -> metrics` is called once, for the
  selected head. Without validation a single head is reported as it is.
  """
  if validation is not None:
    for run, metrics in zip(sweep, heads_metrics(heads, validation)):
      run['validation'] = metrics
    best = select_best(sweep, metric)
    selection = dict(index=best, metric=metric, on='validation')
  elif len(sweep) == 1:
    best = 0
    selection = dict(index=0, metric=None, on='single configuration, no validation split')
  else:
    raise ValueError(f'{len(sweep)} configurations but no validation split '
                     '(data.eval_split is empty): the choice needs one, and it must '
                     'not be the test split.')
  selected = dict(sweep[best], selection=selection)
  report = dict(sweep=sweep, selected=selected)
  report['test'] = test_fn(take_head(heads, best))
  return report


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             pretrained: Optional[checkpointing.Pretrained] = None) -> dict:
  """Runs the protocol and writes `<workdir>/results.json`; returns the results."""
  validate_config(config)
  pretrained = load_encoder_source(config, pretrained)
  model_config = pretrained.config.model
  data = config.data
  num_classes = input_pipeline.num_classes(data)
  num_train = input_pipeline.num_examples(data, data.train_split)
  num_steps = total_steps(config.training, num_train)
  peaks = [peak_lr(lr, config.training.batch_size, config.optimizer.lr_scaling)
           for lr in config.optimizer.base_lrs]
  results = dict(
      protocol='linear', pretrained=dict(source=pretrained.source, step=pretrained.step,
                                         model=model_config.to_dict(),
                                         random_init=bool(config.get('random_init', False))),
      config=json.loads(config.to_json_best_effort()), num_classes=num_classes,
      num_train_examples=num_train, total_steps=num_steps, status='training')
  write_results(workdir, results)
  metric_writers.progress('linear eval of %s (%s, step %d) on %s: %d classes, %d train '
                          'examples, %d steps at batch %d, peak lrs %s', pretrained.source,
                          model_config.encoder, pretrained.step, data.dataset, num_classes,
                          num_train, num_steps, config.training.batch_size, peaks)
  features_fn = encoder_features_fn(model_config)
  params, state = update.replicate((pretrained.online_params, pretrained.online_state))
  if config.fast_features:
    embeddings, labels = training_features(config, pretrained, features_fn, params, state)
    heads, final_losses = train_heads_on_features(config, embeddings, labels, num_classes,
                                                  peaks, num_steps)
  else:
    heads, final_losses = train_heads_on_images(config, pretrained, num_classes, peaks,
                                                num_steps)
  sweep = [dict(base_lr=float(b), peak_lr=float(p), final_train_loss=l)
           for b, p, l in zip(config.optimizer.base_lrs, peaks, final_losses)]
  batch_size = eval_batch_size(config)
  validation = (split_features(validation_data(data), data.eval_split, batch_size,
                               features_fn, params, state) if data.eval_split else None)

  def test_fn(head):
    if not data.test_split:
      return None
    test = split_features(data, data.test_split, batch_size, features_fn, params, state)
    return dict(heads_metrics(head, test)[0], split=data.test_split)

  results.update(sweep_report(heads, sweep, validation, test_fn,
                              config.evaluation.selection_metric), status='done')
  path = write_results(workdir, results)
  metric_writers.progress('selected base lr %s on %s: %s; test (%s): %s; written to %s',
                          results['selected']['base_lr'], data.eval_split or '-',
                          results['selected'].get('validation'), data.test_split or '-',
                          results['test'], path)
  return results


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails before any work, naming every bad value."""
  errors = []
  opt, training = config.optimizer, config.training
  if opt.lr_scaling not in LR_SCALINGS:
    errors.append(f'optimizer.lr_scaling={opt.lr_scaling!r}: use one of {LR_SCALINGS}.')
  if not opt.base_lrs or any(lr <= 0 for lr in opt.base_lrs):
    errors.append(f'optimizer.base_lrs={opt.base_lrs!r} must be a non-empty list of '
                  'positive numbers.')
  if not 0 <= opt.momentum < 1:
    errors.append(f'optimizer.momentum={opt.momentum!r} must be in [0, 1).')
  if training.batch_size < 1 or training.batch_size % jax.device_count():
    errors.append(f'training.batch_size={training.batch_size} must be a positive multiple '
                  f'of the {jax.device_count()} devices.')
  if config.evaluation.selection_metric not in SELECTION_METRICS:
    errors.append(f'evaluation.selection_metric={config.evaluation.selection_metric!r}: use '
                  f'one of {SELECTION_METRICS}.')
  data = config.data
  if (data.eval_split and data.eval_split == data.test_split and
      validation_data(data).dataset == data.dataset):
    errors.append(f'data.eval_split and data.test_split are both {data.eval_split!r}: '
                  'selecting on the split that is reported overstates the result; hold '
                  "out a validation split (e.g. 'train[-5000:]').")
  if not data.eval_split and len(opt.base_lrs) > 1:
    errors.append(f'{len(opt.base_lrs)} learning rates but data.eval_split is empty: '
                  'the sweep selects on validation.')
  if errors:
    raise ValueError('invalid linear-eval config:\n  ' + '\n  '.join(errors))


# -------------------------------------------------------------------- CLI ---

def run(argv: Optional[list[str]] = None) -> None:
  """Console entry point (`byol-jax-linear-eval`)."""
  cli_main(evaluate, 'configs/linear_eval.py', argv)


def cli_main(fn, default_config: str, argv: Optional[list[str]] = None) -> None:
  """absl app around `fn(config, workdir)`: --config=<file>[:preset] --workdir=<dir>."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flag = config_flags.DEFINE_config_file('config', default_config,
                                                'Config file[:preset].')
  workdir_flag = flags.DEFINE_string('workdir', None, 'results.json goes here.',
                                     required=True)

  def main(args):
    if len(args) > 1:
      raise app.UsageError(f'unexpected arguments: {args[1:]}')
    metric_writers.quiet_library_logs()
    results = fn(config_flag.value, os.path.expanduser(workdir_flag.value))
    print(json.dumps({k: results[k] for k in ('selected', 'validation', 'test')
                      if k in results},
                     indent=2, sort_keys=True))

  app.run(main, argv=argv)


if __name__ == '__main__':
  run()
