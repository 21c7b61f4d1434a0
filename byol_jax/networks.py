"""Haiku networks of BYOL: ResNet v1 torso, projector/predictor MLPs, online classifier.

Module and parameter names follow the official implementation exactly (see
`../shared/spec/OFFICIAL_PARAMS.md`), e.g. `res_net50/~/block_group_0/~/block_0/~/conv_0/w`,
`projector/linear/w`, `predictor/linear_1/w`, `classifier/w`, so released official
checkpoints map onto our parameter trees without renaming.

Differences from Haiku's own `hk.nets.ResNet` that matter for fidelity are explicit here
rather than inherited: the zero-init of the last BN scale of a block is a flag (the paper
used scale 1 everywhere, Haiku's BlockV1 zero-inits the bottleneck's last BN), the
group-0 projection shortcut of ResNet-18/34 is a flag (on in the official code), and the
stem has an `imagenet` and a `cifar` variant.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# ImageNet statistics, applied inside the forward pass to [0, 1] RGB images (spec 5.5).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  module_name: str
  blocks_per_group: Sequence[int]
  bottleneck: bool
  channels_per_group: Sequence[int]


ENCODERS: Mapping[str, EncoderSpec] = {
    'tiny': EncoderSpec('tiny_res_net', (1, 1, 1, 1), False, (8, 8, 8, 8)),
    'resnet18': EncoderSpec('res_net18', (2, 2, 2, 2), False, (64, 128, 256, 512)),
    'resnet34': EncoderSpec('res_net34', (3, 4, 6, 3), False, (64, 128, 256, 512)),
    'resnet50': EncoderSpec('res_net50', (3, 4, 6, 3), True, (256, 512, 1024, 2048)),
    'resnet101': EncoderSpec('res_net101', (3, 4, 23, 3), True, (256, 512, 1024, 2048)),
    'resnet152': EncoderSpec('res_net152', (3, 8, 36, 3), True, (256, 512, 1024, 2048)),
    'resnet200': EncoderSpec('res_net200', (3, 24, 36, 3), True, (256, 512, 1024, 2048)),
}
STEMS = ('imagenet', 'cifar')
# Initial BN `average`s (only a step-0 evaluation reads them; training overwrites them
# at the first step): 'centre_crops' of the first training images, or 'first_batch',
# the official init on the first pretraining batch, which is then not trained on.
BN_INITS = ('centre_crops', 'first_batch')


def scaled(channels: int, width: float) -> int:
  """Channel count at a width multiplier; fractional widths round, never below 1."""
  return max(1, int(round(channels * width)))


def representation_size(encoder: str, width: float) -> int:
  spec = ENCODERS[encoder]
  return scaled(spec.channels_per_group[-1], width)


@dataclasses.dataclass(frozen=True)
class BNConfig:
  decay_rate: float = 0.9
  eps: float = 1e-5
  cross_replica_axis: Optional[str] = None


def make_batch_norm(bn: BNConfig, name: str, scale_init=None) -> hk.BatchNorm:
  """BN per spec 1.3; the cross-replica sync only acts in training mode (Haiku)."""
  return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=bn.decay_rate,
                      eps=bn.eps, scale_init=scale_init,
                      cross_replica_axis=bn.cross_replica_axis, name=name)


def apply_batch_norm(module: hk.BatchNorm, x: jax.Array, is_training: bool) -> jax.Array:
  """Runs BN in float32 whatever the compute dtype (mixed precision keeps BN exact)."""
  return module(x.astype(jnp.float32), is_training=is_training).astype(x.dtype)


def _conv(channels: int, kernel: int, stride: int, name: str) -> hk.Conv2D:
  return hk.Conv2D(channels, kernel, stride=stride, with_bias=False, padding='SAME',
                   name=name)


class Block(hk.Module):
  """ResNet v1 block (post-activation), basic or bottleneck (stride on the 3x3: v1.5).

  Submodules are built in the constructor so Haiku names them `block_B/~/conv_K`, the
  official paths.
  """

  def __init__(self, channels: int, stride: int, use_projection: bool, bottleneck: bool,
               bn: BNConfig, zero_init_last_bn: bool, name: str):
    super().__init__(name=name)
    self.shortcut = None
    if use_projection:
      self.shortcut = (_conv(channels, 1, stride, 'shortcut_conv'),
                       make_batch_norm(bn, 'shortcut_batchnorm'))
    if bottleneck:
      inner = max(1, channels // 4)
      layers = ((inner, 1, 1), (inner, 3, stride), (channels, 1, 1))
    else:
      layers = ((channels, 3, stride), (channels, 3, 1))
    self.layers = []
    for i, (out, kernel, layer_stride) in enumerate(layers):
      last = i == len(layers) - 1
      scale_init = jnp.zeros if (last and zero_init_last_bn) else None
      self.layers.append((_conv(out, kernel, layer_stride, f'conv_{i}'),
                          make_batch_norm(bn, f'batchnorm_{i}', scale_init)))

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    shortcut = x
    if self.shortcut is not None:
      conv, norm = self.shortcut
      shortcut = apply_batch_norm(norm, conv(x), is_training)
    out = x
    for i, (conv, norm) in enumerate(self.layers):
      out = apply_batch_norm(norm, conv(out), is_training)
      if i < len(self.layers) - 1:
        out = jax.nn.relu(out)
    return jax.nn.relu(out + shortcut)


class BlockGroup(hk.Module):

  def __init__(self, channels: int, num_blocks: int, stride: int, use_projection: bool,
               bottleneck: bool, bn: BNConfig, zero_init_last_bn: bool, name: str):
    super().__init__(name=name)
    self.blocks = [
        Block(channels, stride if i == 0 else 1, use_projection and i == 0, bottleneck,
              bn, zero_init_last_bn, name=f'block_{i}') for i in range(num_blocks)]

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    for block in self.blocks:
      x = block(x, is_training)
    return x


class ResNetTorso(hk.Module):
  """ResNet v1 encoder without logits; returns the global-average-pooled representation."""

  def __init__(self, encoder: str, width: float, stem: str, bn: BNConfig,
               zero_init_last_bn: bool = False, group0_projection: bool = True):
    spec = ENCODERS[encoder]
    super().__init__(name=spec.module_name)
    self.stem = stem
    kernel, stride = (7, 2) if stem == 'imagenet' else (3, 1)
    self.initial_conv = _conv(scaled(64, width), kernel, stride, 'initial_conv')
    self.initial_batchnorm = make_batch_norm(bn, 'initial_batchnorm')
    self.groups = [
        BlockGroup(
            channels=scaled(channels, width), num_blocks=num_blocks,
            stride=1 if g == 0 else 2,
            use_projection=g > 0 or group0_projection or spec.bottleneck,
            bottleneck=spec.bottleneck, bn=bn, zero_init_last_bn=zero_init_last_bn,
            name=f'block_group_{g}')
        for g, (num_blocks, channels) in enumerate(
            zip(spec.blocks_per_group, spec.channels_per_group))]

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    x = jax.nn.relu(apply_batch_norm(self.initial_batchnorm, self.initial_conv(x),
                                     is_training))
    if self.stem == 'imagenet':  # the cifar stem has no max-pool
      x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME')
    for group in self.groups:
      x = group(x, is_training)
    return jnp.mean(x, axis=(1, 2))


class MLP(hk.Module):
  """Linear(hidden, bias) -> BN -> ReLU -> Linear(out, no bias); the output is not normalised."""

  def __init__(self, hidden_size: int, output_size: int, bn: BNConfig, name: str):
    super().__init__(name=name)
    self.hidden_size = hidden_size
    self.output_size = output_size
    self.bn = bn

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    # Built in the call (not the constructor): the official paths are `projector/linear`.
    x = hk.Linear(self.hidden_size, with_bias=True, name='linear')(x)
    x = jax.nn.relu(apply_batch_norm(make_batch_norm(self.bn, 'batch_norm'), x, is_training))
    return hk.Linear(self.output_size, with_bias=False, name='linear_1')(x)


def normalize_images(images: jax.Array) -> jax.Array:
  """[0, 1] RGB (or uint8) -> ImageNet-standardised float32 (spec 5.5)."""
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (images.astype(jnp.float32) - mean) / std


def _compute_dtype(precision: str):
  if precision == 'float32':
    return jnp.float32
  if precision == 'bfloat16':
    return jnp.bfloat16
  raise ValueError(f"model precision must be 'float32' or 'bfloat16', got {precision!r}")


def _float32_creator(next_creator, shape, dtype, init, context):
  """Parameters are created and stored in float32 whatever the compute dtype."""
  del context
  if jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  return next_creator(shape, dtype, init)


def _cast_params_getter(dtype):
  """Hands conv/linear weights to the computation in `dtype`; BN params stay float32."""

  def getter(next_getter, value, context: hk.GetterContext):
    if 'norm' in context.module_name or not jnp.issubdtype(value.dtype, jnp.floating):
      return next_getter(value)
    return next_getter(value.astype(dtype))

  return getter


def encoder_from_config(model_config: ml_collections.ConfigDict,
                        bn: BNConfig) -> ResNetTorso:
  return ResNetTorso(
      encoder=model_config.encoder, width=model_config.width_multiplier,
      stem=model_config.stem, bn=bn, zero_init_last_bn=model_config.zero_init_last_bn,
      group0_projection=model_config.group0_projection)


def make_byol_network(model_config: ml_collections.ConfigDict,
                      num_classes: int,
                      cross_replica_axis: Optional[str] = None) -> hk.TransformedWithState:
  """The per-view BYOL network, one call per view so BN statistics are per view.

  apply(params, state, images [B,H,W,3] in [0,1] or uint8, is_training,
        target=False) -> ({'embedding', 'projection', 'prediction', 'logits'}, state)
  With `target=True` only the encoder and projector run (the target's predictor and
  classifier outputs are unused in BYOL; skipping them changes nothing but the cost).
  All outputs are float32.
  """
  validate_model_config(model_config)
  dtype = _compute_dtype(model_config.precision)
  bn = BNConfig(decay_rate=model_config.bn_decay, eps=model_config.bn_eps,
                cross_replica_axis=cross_replica_axis)

  def forward(images: jax.Array, is_training: bool, target: bool = False):
    with hk.custom_creator(_float32_creator), hk.custom_getter(_cast_params_getter(dtype)):
      x = normalize_images(images).astype(dtype)
      embedding = encoder_from_config(model_config, bn)(x, is_training)
      projection = MLP(model_config.projector_hidden_size, model_config.projection_size,
                       bn, name='projector')(embedding, is_training)
      outputs = {'embedding': embedding.astype(jnp.float32),
                 'projection': projection.astype(jnp.float32)}
      if target:
        return outputs
      prediction = MLP(model_config.predictor_hidden_size, model_config.projection_size,
                       bn, name='predictor')(projection, is_training)
      outputs['prediction'] = prediction.astype(jnp.float32)
    # The online classifier sees the stop-gradient representation: it never trains the encoder.
    outputs['logits'] = hk.Linear(num_classes, name='classifier')(
        jax.lax.stop_gradient(outputs['embedding']))
    return outputs

  return hk.without_apply_rng(hk.transform_with_state(forward))


def init_network(network: hk.TransformedWithState, key: jax.Array, image_size: int,
                 axis_name: str = 'i', images=None) -> tuple[hk.Params, hk.State]:
  """Params and BN state of a network built with a sync axis.

  With `images` (uint8 [B, S, S, 3], e.g. centre crops of the first training batch, as
  the official code initialises from its first batch) the BN moving averages start
  from their statistics, so inference-mode evaluation of the initial network is
  meaningful. Without, the BN state is empty (counters 0). Training mode is what
  creates every BN state; a size-1 vmap binds the BN sync axis so this runs outside
  pmap.
  """
  keep_state = images is not None
  if images is None:
    images = jnp.zeros((2, image_size, image_size, 3), jnp.uint8)

  @jax.jit
  def init(key, images):
    params, state = jax.vmap(lambda x: network.init(key, x, is_training=True),
                             axis_name=axis_name)(images[None])
    params, state = jax.tree.map(lambda x: x[0], (params, state))
    return params, state if keep_state else jax.tree.map(jnp.zeros_like, state)

  return init(key, jnp.asarray(images))


def init_network_from_batch(network: hk.TransformedWithState, key: jax.Array,
                            view1: jax.Array,
                            axis_name: str = 'i') -> tuple[hk.Params, hk.State]:
  """The official initialisation: a pmapped training-mode init on the first batch.

  view1: uint8 [local_devices, b, S, S, 3], view 1 of the first pretraining batch as
  the input pipeline delivers it. Haiku's init returns each EMA as created by its first
  call: counter and hidden 0, `average` the batch statistics, here synced over every
  device of every host as in the official pmapped init (the official init also runs
  view 2, whose EMA updates init discards). Params depend on the key alone.
  """
  init = lambda key, view: network.init(key, view, is_training=True)
  out = jax.pmap(init, axis_name, in_axes=(None, 0))(key, view1)
  return jax.tree.map(lambda x: np.asarray(x[0]), out)  # the same on every device


def make_encoder_network(model_config: ml_collections.ConfigDict) -> hk.TransformedWithState:
  """The encoder alone, inference or training mode; consumes the same param tree."""
  dtype = _compute_dtype(model_config.precision)
  bn = BNConfig(decay_rate=model_config.bn_decay, eps=model_config.bn_eps)

  def forward(images: jax.Array, is_training: bool = False) -> jax.Array:
    with hk.custom_creator(_float32_creator), hk.custom_getter(_cast_params_getter(dtype)):
      x = normalize_images(images).astype(dtype)
      return encoder_from_config(model_config, bn)(x, is_training).astype(jnp.float32)

  return hk.without_apply_rng(hk.transform_with_state(forward))


def validate_model_config(model_config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the bad value and the accepted ones."""
  if model_config.encoder not in ENCODERS:
    raise ValueError(f'model.encoder={model_config.encoder!r} is unknown; choose one of '
                     f'{sorted(ENCODERS)}.')
  if model_config.stem not in STEMS:
    raise ValueError(f'model.stem={model_config.stem!r} is unknown; choose one of {STEMS}.')
  if not model_config.width_multiplier > 0:
    raise ValueError(f'model.width_multiplier={model_config.width_multiplier!r} must be > 0 '
                     '(the paper uses 1-4; fractional widths such as 0.25 fit a CPU).')
  for key in ('projector_hidden_size', 'predictor_hidden_size', 'projection_size'):
    if int(model_config[key]) < 1:
      raise ValueError(f'model.{key}={model_config[key]!r} must be a positive integer.')
  if not 0. <= model_config.bn_decay < 1.:
    raise ValueError(f'model.bn_decay={model_config.bn_decay!r} must be in [0, 1).')
  if model_config.get('bn_init', 'centre_crops') not in BN_INITS:
    raise ValueError(f'model.bn_init={model_config.bn_init!r} is unknown; choose one of '
                     f'{BN_INITS}.')
  _compute_dtype(model_config.precision)


def model_config(**overrides: Any) -> ml_collections.ConfigDict:
  """Paper defaults for the model section of a config (ResNet-50 1x, spec 1 and 13)."""
  config = ml_collections.ConfigDict(dict(
      encoder='resnet50',
      width_multiplier=1.0,
      stem='imagenet',
      zero_init_last_bn=False,      # paper: all BN scales start at 1; official/Haiku: True.
      group0_projection=True,       # official ResNet-18/34 have it; torchvision's don't.
      projector_hidden_size=4096,
      predictor_hidden_size=4096,
      projection_size=256,
      bn_decay=0.9,
      bn_eps=1e-5,
      target_init='copy',           # paper: target starts as a copy; official: 'independent'.
      bn_init='centre_crops',       # BN statistics at init; 'first_batch' = official (spec 7.3).
      precision='float32',
  ))
  config.update(overrides)
  return config
