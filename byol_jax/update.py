"""The BYOL training state and its pure per-device update step (spec 2, 3, 4, 7.2-7.4).

    batch (uint8 views) -> augmentations -> online/target networks (one call per view)
    -> loss -> grads pmean -> LARS (lr from the step) -> target EMA (tau from the step)

`update(state, batch) -> (state, metrics)` uses no pmap specifics beyond the collective
axis name, so it runs under `jax.pmap(..., axis_name=...)` (what `pmap_update` builds)
or `shard_map` alike.

Deliberate differences from the official code (all documented in the README):
- Augmentation keys are derived per image from (seed, step, view, global example index)
  instead of per device, so the result does not depend on how the global batch is split
  over devices, hosts or accumulation micro-batches (`augmentation.rng='official'`
  restores the official per-device key chain).
- The target network runs the encoder and projector only (its predictor and classifier
  outputs are unused); its parameter tree is still the full official tree and the EMA
  covers all of it.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from byol_jax import augmentations
from byol_jax import losses
from byol_jax import networks
from byol_jax import optimizers
from byol_jax import schedules

AXIS_NAME = 'i'
# fold_in constant that separates the augmentation key stream from the init keys.
AUGMENTATION_STREAM = 0xA06
# 'per_image': keys from (seed, step, view, global example index), device-count free.
# 'official': the official main loop's chain of keys split over devices (spec 6.3, 7.4).
AUGMENTATION_RNG_MODES = ('per_image', 'official')


class TrainState(NamedTuple):
  """Everything a BYOL step reads and writes; a checkpoint is exactly this."""
  online_params: hk.Params
  online_state: hk.State
  target_params: hk.Params
  target_state: hk.State
  opt_state: optax.OptState
  step: jax.Array   # int32 scalar: updates applied so far (k in the schedules).
  rng: jax.Array    # uint32[2]: augmentation key. augmentation.rng='per_image': fixed,
                    # step keys are fold_in(rng, step); 'official': advanced every step.


class StepSettings(NamedTuple):
  """Numbers the step needs that are derived from the config and the dataset size."""
  batch_size: int          # global (effective) batch per optimiser step
  total_steps: int         # K
  warmup_steps: int        # W
  base_lr: float
  base_target_ema: float
  accumulation_steps: int
  num_classes: int


def init_state(config: ml_collections.ConfigDict, network: hk.TransformedWithState,
               optimizer: optax.GradientTransformation, image_size: int,
               axis_name: str = AXIS_NAME, images=None, first_batch=None) -> TrainState:
  """Initial state, identical on every device and host for the same seed and images.

  BN EMAs start with counter and hidden 0 (as Haiku's init leaves them); their
  `average`, which only an inference-mode evaluation before the first step reads, is
  the batch statistics of `images` (uint8 [B, S, S, 3]) or, with `first_batch` (a
  pretraining batch, view1 [local_devices, b, S, S, 3]), of the official pmapped init
  on view 1 (call it on every process). Neither given: all zeros.
  """
  key = jax.random.PRNGKey(config.seed)
  # The official derivation: (online, target) = split(PRNGKey(seed)), so with
  # target_init='independent' both networks start from the official code's keys.
  online_key, target_key = jax.random.split(key)
  # Augmentations get their own stream, apart from the init keys; the official code
  # starts its loop key at PRNGKey(0) whatever the seed.
  if config.augmentation.get('rng', 'per_image') == 'official':
    aug_key = jax.random.PRNGKey(0)
  else:
    aug_key = jax.random.fold_in(key, AUGMENTATION_STREAM)
  def init(key):
    if first_batch is not None:
      return networks.init_network_from_batch(network, key, first_batch['view1'],
                                              axis_name)
    return networks.init_network(network, key, image_size, axis_name, images)

  online_params, online_state = init(online_key)
  target_init = config.model.target_init
  if target_init == 'copy':  # paper, Appendix J: the target starts as the online network
    target_params, target_state = online_params, online_state
  elif target_init == 'independent':  # official code: a separate key
    target_params, target_state = init(target_key)
  else:
    raise ValueError(f"model.target_init={target_init!r} must be 'copy' (paper) or "
                     "'independent' (official code).")
  return TrainState(
      online_params=online_params, online_state=online_state,
      target_params=target_params, target_state=target_state,
      opt_state=optimizer.init(online_params),
      step=jnp.zeros((), jnp.int32), rng=aug_key)


def per_image_keys(key: jax.Array, batch: int, axis_name: str) -> jax.Array:
  """One key per image from its global example index (device-count independent)."""
  offset = jax.lax.axis_index(axis_name) * batch
  indices = offset + jnp.arange(batch)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def make_update_fn(config: ml_collections.ConfigDict, network: hk.TransformedWithState,
                   optimizer: optax.GradientTransformationExtraArgs,
                   settings: StepSettings, axis_name: str = AXIS_NAME):
  """Builds the per-device `update(state, batch) -> (state, metrics)`.

  batch: {'view1', 'view2': uint8 [b, H, W, 3], 'labels': int32 [b]} per device, where
  b = batch_size / device_count. With accumulation A > 1, b is split into A
  micro-batches of b / A; the optimiser, the step and the EMA advance once per call.
  """
  aug_config = config.augmentation
  rng_mode = aug_config.get('rng', 'per_image')
  if rng_mode not in AUGMENTATION_RNG_MODES:
    raise ValueError(f'augmentation.rng={rng_mode!r} is unknown; use one of '
                     f'{AUGMENTATION_RNG_MODES}.')
  num_micro = settings.accumulation_steps

  def augment_views(rng, step, view1, view2):
    """Both views augmented; returns them and the rng the next step starts from."""
    if not aug_config.enabled:
      return view1.astype(jnp.float32) / 255., view2.astype(jnp.float32) / 255., rng
    if rng_mode == 'official':
      # The official main loop: (step key, next) = split(rng); the step key is split
      # over all devices of all hosts and each device augments its shard with its key.
      step_rng, next_rng = jax.random.split(rng)
      device_key = jax.random.split(step_rng, jax.lax.psum(1, axis_name))[
          jax.lax.axis_index(axis_name)]
      key1, key2 = augmentations.official_view_keys(device_key)
      return (augmentations.augment_view_official(key1, view1, aug_config.view1),
              augmentations.augment_view_official(key2, view2, aug_config.view2), next_rng)
    step_key = jax.random.fold_in(rng, step)
    out = []
    for view, images in ((1, view1), (2, view2)):
      keys = per_image_keys(jax.random.fold_in(step_key, view), images.shape[0], axis_name)
      out.append(augmentations.augment_view(keys, images, aug_config[f'view{view}']))
    return out[0], out[1], rng

  def loss_fn(online_params, online_state, target_params, target_state, view1, view2,
              labels):
    online1, online_state = network.apply(online_params, online_state, view1, True)
    online2, online_state = network.apply(online_params, online_state, view2, True)
    target1, target_state = network.apply(target_params, target_state, view1, True,
                                          target=True)
    target2, target_state = network.apply(target_params, target_state, view2, True,
                                          target=True)
    repr_loss = losses.byol_loss(online1['prediction'], online2['prediction'],
                                 target1['projection'], target2['projection'])
    # The classifier monitors view 1 only (official); its input is stop-gradient.
    classif_loss = losses.softmax_cross_entropy(online1['logits'], labels)
    projection = losses.l2_normalize(online1['projection'])
    aux = dict(
        online_state=online_state, target_state=target_state,
        scalars=dict(
            repr_loss=repr_loss, classif_loss=classif_loss,
            top1_accuracy=jnp.mean(losses.topk_correct(online1['logits'], labels, 1)),
            top5_accuracy=jnp.mean(losses.topk_correct(online1['logits'], labels, 5))),
        moments=dict(mean=jnp.mean(projection, axis=0),
                     mean_square=jnp.mean(jnp.square(projection), axis=0)))
    return repr_loss + classif_loss, aux

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def micro_step(state: TrainState, online_state, target_state, views, labels):
    return grad_fn(state.online_params, online_state, state.target_params, target_state,
                   views[0], views[1], labels)

  def update(state: TrainState, batch: Mapping[str, jax.Array]):
    chex.assert_rank([batch['view1'], batch['view2']], 4)
    view1, view2, next_rng = augment_views(state.rng, state.step, batch['view1'],
                                           batch['view2'])
    labels = batch['labels']

    if num_micro == 1:
      grads, aux = micro_step(state, state.online_state, state.target_state,
                              (view1, view2), labels)
    else:
      def split(x):
        return x.reshape((num_micro, x.shape[0] // num_micro) + x.shape[1:])

      def body(carry, micro):
        grads_sum, online_state, target_state = carry
        grads, aux = micro_step(state, online_state, target_state, micro[:2], micro[2])
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        return (grads_sum, aux['online_state'], aux['target_state']), (
            aux['scalars'], aux['moments'])

      zeros = jax.tree.map(jnp.zeros_like, state.online_params)
      (grads_sum, online_state, target_state), (scalars, moments) = jax.lax.scan(
          body, (zeros, state.online_state, state.target_state),
          (split(view1), split(view2), split(labels)))
      grads = jax.tree.map(lambda g: g / num_micro, grads_sum)
      aux = dict(online_state=online_state, target_state=target_state,
                 scalars=jax.tree.map(lambda x: jnp.mean(x, axis=0), scalars),
                 moments=jax.tree.map(lambda x: jnp.mean(x, axis=0), moments))

    grads = jax.lax.pmean(grads, axis_name)
    lr = schedules.learning_rate(
        state.step, base_lr=settings.base_lr, batch_size=settings.batch_size,
        total_steps=settings.total_steps, warmup_steps=settings.warmup_steps)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.online_params,
                                          learning_rate=lr)
    online_params = optax.apply_updates(state.online_params, updates)
    tau = schedules.target_ema(state.step, base_ema=settings.base_target_ema,
                               total_steps=settings.total_steps)
    # EMA towards the *new* online params, on every target param (BN scale/offset too),
    # never on BN moving statistics (those are Haiku state).
    target_params = jax.tree.map(lambda t, o: t + (1. - tau) * (o - t),
                                 state.target_params, online_params)

    scalars = jax.lax.pmean(aux['scalars'], axis_name)
    moments = jax.lax.pmean(aux['moments'], axis_name)
    variance = jnp.maximum(moments['mean_square'] - jnp.square(moments['mean']), 0.)
    metrics = dict(
        scalars, loss=scalars['repr_loss'] + scalars['classif_loss'],
        learning_rate=lr, tau=tau, projection_std=jnp.mean(jnp.sqrt(variance)))
    new_state = TrainState(
        online_params=online_params, online_state=aux['online_state'],
        target_params=target_params, target_state=aux['target_state'],
        opt_state=opt_state, step=state.step + 1, rng=next_rng)
    return new_state, metrics

  return update


def pmap_update(update_fn, axis_name: str = AXIS_NAME):
  """pmap over local devices with the state buffers donated."""
  return jax.pmap(update_fn, axis_name=axis_name, donate_argnums=(0,))


def device_sharding(devices=None) -> jax.sharding.NamedSharding:
  """Leading axis split over `devices` (default: this process's): pmap's own layout.

  Placing inputs with exactly the sharding pmap returns keeps the step from compiling
  a second time when its outputs are fed back in.
  """
  devices = list(devices or jax.local_devices())
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS_NAME,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS_NAME))


def replicate(tree: Any, devices=None) -> Any:
  """Copies a host pytree onto every device (leading device axis)."""
  sharding = device_sharding(devices)
  n = sharding.mesh.size
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
      tree)


def unreplicate(tree: Any) -> Any:
  """The first device's copy, as host numpy arrays."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x[0])), tree)


def settings_from_config(config: ml_collections.ConfigDict, num_train_examples: int,
                         num_classes: int) -> StepSettings:
  """K and W from epochs and the split size, as the official `epochs * N // B`."""
  training = config.training
  total = schedules.steps_from_epochs(training.epochs, num_train_examples,
                                      training.batch_size)
  warmup = schedules.steps_from_epochs(config.optimizer.warmup_epochs, num_train_examples,
                                       training.batch_size)
  if training.get('total_steps', -1) not in (-1, None):
    total = int(training.total_steps)
  if config.optimizer.get('warmup_steps', -1) not in (-1, None):
    warmup = int(config.optimizer.warmup_steps)
  return StepSettings(
      batch_size=training.batch_size, total_steps=total, warmup_steps=warmup,
      base_lr=config.optimizer.base_lr, base_target_ema=training.base_target_ema,
      accumulation_steps=training.accumulation_steps, num_classes=num_classes)


def build(config: ml_collections.ConfigDict, settings: StepSettings,
          axis_name: str = AXIS_NAME):
  """network, optimizer and per-device update function for a config."""
  network = networks.make_byol_network(config.model, settings.num_classes,
                                       cross_replica_axis=axis_name)
  optimizer = optimizers.optimizer_from_config(config.optimizer)
  update_fn = make_update_fn(config, network, optimizer, settings, axis_name)
  return network, optimizer, update_fn

