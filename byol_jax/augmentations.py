"""Device-side BYOL augmentations (spec 6): flip, colour jitter, grayscale, blur, solarise.

They run inside the compiled update step, vmapped over the images of a view, each image
driven by its own PRNG key. The caller derives that key from the global example index, so
an image's augmentation does not depend on the batch it sits in or on the device count.

Semantics are TensorFlow's, as in the official code (spec 6.2): additive brightness,
per-channel-mean contrast, saturation and hue through TF's RGB<->HSV algorithm, grayscale
weights (0.2989, 0.5870, 0.1140), Gaussian blur applied separably with SAME zero padding
(`blur_padding='reflect'` is the opt-in fixed variant of spec 11.12).

Cost (spec 6.3, 11.11): under vmap every data-dependent branch is computed for every
image and then selected. Here the four jitter ops at a permutation position share one
RGB->HSV->RGB round trip (saturation and hue are the same HSV map with a neutral value for
the other parameter), so an image pays 4 round trips instead of the official 8; branches
whose probability is exactly 0 or 1 are resolved at trace time (view 1 always blurs
without a select, view 1 never computes solarisation).
"""

from __future__ import annotations

from typing import Callable, Union

import chex
import jax
import jax.numpy as jnp
import ml_collections

# ITU-R 601 luma weights as truncated by TF's rgb_to_grayscale and the official code.
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)
BLUR_PADDINGS = ('zero', 'reflect')

# Jitter op indices; the official application order when no permutation is drawn.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def view_config(view: int) -> ml_collections.ConfigDict:
  """Defaults of T (view=1) and T' (view=2), spec 6.1; they differ only in blur/solarise.

  Blur kernel size is `2 * int(side * blur_kernel_fraction / 2) + 1`: 23 at 224 px,
  13 at 128 px, 9 at 96 px, 7 at 64 px, 3 at 32 px.
  """
  if view not in (1, 2):
    raise ValueError(f'view must be 1 (T) or 2 (T\'), got {view!r}.')
  return ml_collections.ConfigDict(dict(
      flip_prob=0.5,
      color_apply_prob=1.0,
      color_jitter_prob=0.8,
      brightness=0.4,
      contrast=0.4,
      saturation=0.2,
      hue=0.1,
      grayscale_prob=0.2,
      blur_prob=1.0 if view == 1 else 0.1,
      blur_sigma_min=0.1,
      blur_sigma_max=2.0,
      blur_kernel_fraction=0.1,
      blur_padding='zero',
      solarize_prob=0.0 if view == 1 else 0.2,
      solarize_threshold=0.5,
  ))


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad field; called at trace time by augment_view."""
  for name in ('flip_prob', 'color_apply_prob', 'color_jitter_prob', 'grayscale_prob',
               'blur_prob', 'solarize_prob'):
    value = cfg[name]
    if not 0. <= value <= 1.:
      raise ValueError(f'augmentation {name}={value!r} is not a probability; use a value '
                       'in [0, 1].')
  for name in ('brightness', 'contrast', 'saturation', 'hue'):
    if cfg[name] < 0.:
      raise ValueError(f'augmentation {name}={cfg[name]!r} must be >= 0 (0 disables it).')
  for name in ('contrast', 'saturation'):
    if cfg[name] > 1.:
      raise ValueError(f'augmentation {name}={cfg[name]!r} would allow a negative factor '
                       f'1 - {name}; use a value in [0, 1].')
  if cfg.hue > 0.5:
    raise ValueError(f'augmentation hue={cfg.hue!r} exceeds half the hue circle; use a '
                     'value in [0, 0.5].')
  if not 0. < cfg.blur_sigma_min <= cfg.blur_sigma_max:
    raise ValueError('augmentation blur sigma range must satisfy 0 < blur_sigma_min <= '
                     f'blur_sigma_max, got [{cfg.blur_sigma_min!r}, '
                     f'{cfg.blur_sigma_max!r}].')
  if not cfg.blur_kernel_fraction > 0.:
    raise ValueError(f'augmentation blur_kernel_fraction={cfg.blur_kernel_fraction!r} '
                     'must be > 0 (0.1 gives 23 taps at 224 px).')
  if cfg.blur_padding not in BLUR_PADDINGS:
    raise ValueError(f'augmentation blur_padding={cfg.blur_padding!r} is unknown; use one '
                     f'of {BLUR_PADDINGS}.')


# ----------------------------------------------------------------------------- colour ops
# Each takes one float32 image [H, W, 3] and one scalar; none clips (the pipeline does).


def adjust_brightness(x: jax.Array, delta) -> jax.Array:
  """TF brightness is additive: x + delta (torchvision would multiply)."""
  return x + delta


def adjust_contrast(x: jax.Array, factor) -> jax.Array:
  """TF contrast: (x - mean_c) * factor + mean_c with the spatial mean of each channel."""
  mean = jnp.mean(x, axis=(-3, -2), keepdims=True)
  return (x - mean) * factor + mean


def rgb_to_hsv(x: jax.Array) -> jax.Array:
  """TF's RGB->HSV: [..., 3] in [0, 1] to (h, s, v) with h in [0, 1) as a circle fraction."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  # The where-guards only keep 0/0 out of the discarded branches.
  saturation = jnp.where(value > 0., chroma / jnp.where(value > 0., value, 1.), 0.)
  norm = 1. / (6. * jnp.where(chroma > 0., chroma, 1.))  # TF's kernel: 1 / (6 range)
  hue = jnp.where(r == value, norm * (g - b),
                  jnp.where(g == value, norm * (b - r) + 2. / 6., norm * (r - g) + 4. / 6.))
  hue = jnp.where(chroma > 0., hue, 0.)
  hue = jnp.where(hue < 0., hue + 1., hue)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
  """TF's HSV->RGB: six hue sectors of chroma c = s*v; h = 1 is read as h = 0."""
  hue, saturation, value = x[..., 0], x[..., 1], x[..., 2]
  chroma = saturation * value
  low = value - chroma
  sector_hue = hue * 6.
  sector = jnp.floor(sector_hue).astype(jnp.int32) % 6
  mid = chroma * (1. - jnp.abs(jnp.fmod(sector_hue, 2.) - 1.))
  zero = jnp.zeros_like(chroma)
  # Per sector, which of (chroma, mid, 0) each of R, G, B takes.
  red = jnp.select([(sector == 0) | (sector == 5), (sector == 1) | (sector == 4)],
                   [chroma, mid], zero)
  green = jnp.select([(sector == 1) | (sector == 2), (sector == 0) | (sector == 3)],
                     [chroma, mid], zero)
  blue = jnp.select([(sector == 3) | (sector == 4), (sector == 2) | (sector == 5)],
                    [chroma, mid], zero)
  return jnp.stack([red + low, green + low, blue + low], axis=-1)


def _adjust_hsv(x: jax.Array, saturation_factor, hue_delta) -> jax.Array:
  """One HSV round trip: S <- clip(S * f, 0, 1), H <- (H + delta) mod 1."""
  hsv = rgb_to_hsv(x)
  hue = jnp.mod(hsv[..., 0] + hue_delta, 1.)
  saturation = jnp.clip(hsv[..., 1] * saturation_factor, 0., 1.)
  return hsv_to_rgb(jnp.stack([hue, saturation, hsv[..., 2]], axis=-1))


def adjust_saturation(x: jax.Array, factor) -> jax.Array:
  """TF saturation: scale S in HSV space and clip it to [0, 1]."""
  return _adjust_hsv(x, factor, 0.)


def adjust_hue(x: jax.Array, delta) -> jax.Array:
  """TF hue: rotate H by delta (a fraction of the circle; 0.1 is 36 degrees)."""
  return _adjust_hsv(x, 1., delta)


def to_grayscale(x: jax.Array) -> jax.Array:
  """Luma with TF's weights, replicated to 3 channels.

  An explicit weighted sum rather than a dot so that no backend lowers it to TF32/bf16.
  """
  wr, wg, wb = GRAYSCALE_WEIGHTS
  luma = wr * x[..., 0] + wg * x[..., 1] + wb * x[..., 2]
  return jnp.repeat(luma[..., None], 3, axis=-1)


# ------------------------------------------------------------------------- blur, solarise


def blur_kernel_size(side: int, fraction: float = 0.1) -> int:
  """Official kernel size: radius int(side * fraction / 2), size 2 * radius + 1."""
  return 2 * int(side * fraction / 2) + 1


def gaussian_kernel(sigma, kernel_size: int) -> jax.Array:
  """Normalised 1-D Gaussian of `kernel_size` taps centred on 0."""
  radius = kernel_size // 2
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-jnp.square(t) / (2. * jnp.square(sigma)))
  return weights / jnp.sum(weights)


def _blur_along(x: jax.Array, weights: jax.Array, axis: int, mode: str) -> jax.Array:
  """Correlate along `axis` as a sum of shifted copies: a depthwise 1-D convolution
  in exact float32 on every backend, and cheap to batch when sigma differs per image."""
  kernel_size = weights.shape[0]
  radius = kernel_size // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(x, pad, mode=mode)
  n = x.shape[axis]
  out = weights[0] * jax.lax.slice_in_dim(padded, 0, n, axis=axis)
  for k in range(1, kernel_size):
    out = out + weights[k] * jax.lax.slice_in_dim(padded, k, k + n, axis=axis)
  return out


def gaussian_blur(x: jax.Array, sigma, kernel_size: int, padding: str = 'zero') -> jax.Array:
  """Separable Gaussian blur of one image [H, W, C]: horizontal, then vertical.

  padding='zero' is TF's SAME padding of the official code (borders darken);
  'reflect' mirrors the image without repeating the edge pixel.
  """
  chex.assert_rank(x, 3)
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f'blur kernel_size={kernel_size!r} must be a positive odd number '
                     '(use blur_kernel_size(side)).')
  if padding not in BLUR_PADDINGS:
    raise ValueError(f'blur padding={padding!r} is unknown; use one of {BLUR_PADDINGS}.')
  radius = kernel_size // 2
  if padding == 'reflect' and radius >= min(x.shape[0], x.shape[1]):
    raise ValueError(f'reflect padding needs a blur radius ({radius}) smaller than the '
                     f'image side ({min(x.shape[0], x.shape[1])}); use a smaller '
                     'blur_kernel_fraction or padding=\'zero\'.')
  mode = 'constant' if padding == 'zero' else 'reflect'
  weights = gaussian_kernel(sigma, kernel_size)
  x = _blur_along(x, weights, axis=1, mode=mode)
  return _blur_along(x, weights, axis=0, mode=mode)


def solarize(x: jax.Array, threshold=0.5) -> jax.Array:
  """Pixels >= threshold become 1 - x; the others are unchanged."""
  return jnp.where(x < threshold, x, 1. - x)


# ---------------------------------------------------------------------- random pipeline

Predicate = Union[bool, jax.Array]


def _bernoulli(u: jax.Array, prob: float) -> Predicate:
  """The official test u <= p with u ~ U[0, 1), resolved statically where p is 0 or 1.

  u <= 1 always holds, so p = 1 is exact; p = 0 never applies (the official code guards
  solarisation the same way, and u == 0 has probability ~2^-24 otherwise).
  """
  if prob <= 0.:
    return False
  if prob >= 1.:
    return True
  return u <= prob


def _maybe(pred: Predicate, fn: Callable[[jax.Array], jax.Array],
           x: jax.Array) -> jax.Array:
  """fn(x) where pred holds, else x; only a traced pred costs a select."""
  if pred is True:
    return fn(x)
  if pred is False:
    return x
  return jnp.where(pred, fn(x), x)


def _flip_left_right(x: jax.Array) -> jax.Array:
  return x[:, ::-1, :]


def random_flip(key: jax.Array, x: jax.Array, prob: float = 0.5) -> jax.Array:
  """Left-right flip of one image [H, W, C] with probability `prob`."""
  u = jax.random.uniform(key, (), jnp.float32)
  return _maybe(_bernoulli(u, prob), _flip_left_right, x)


def _draws(op_keys: jax.Array, cfg) -> tuple[dict[str, jax.Array], jax.Array]:
  """Every random number of one image, from the key tree of spec 6.3.

  op_keys: the image's (flip, colour, blur, solarise) keys, shape [4]. Returns the
  scalar draws by name and the jitter order. Sibling keys go through one vmapped
  split/uniform each: the same bits as separate calls, but ~5 threefry computations to
  compile instead of ~18.
  """
  flip_key, color_key, blur_key, solarize_key = op_keys
  # The official per-image key tree: flip draws from the second half of split(flip);
  # colour and blur split into (apply, transform); sigma comes from split(transform, 1).
  (_, flip_key), (color_apply_key, color_transform_key), (blur_apply_key, blur_transform_key) = (
      jax.vmap(jax.random.split)(jnp.stack([flip_key, color_key, blur_key])))
  sigma_key = jax.random.split(blur_transform_key, 1)[0]
  (perm_key, brightness_key, contrast_key, saturation_key, hue_key, jitter_key,
   gray_key) = jax.random.split(color_transform_key, 7)
  ranges = {  # name: (key, low, high) of a uniform draw
      'flip': (flip_key, 0., 1.),
      'color_apply': (color_apply_key, 0., 1.),
      'brightness': (brightness_key, -cfg.brightness, cfg.brightness),
      'contrast': (contrast_key, 1. - cfg.contrast, 1. + cfg.contrast),
      'saturation': (saturation_key, 1. - cfg.saturation, 1. + cfg.saturation),
      'hue': (hue_key, -cfg.hue, cfg.hue),
      'jitter': (jitter_key, 0., 1.),
      'grayscale': (gray_key, 0., 1.),
      'blur_apply': (blur_apply_key, 0., 1.),
      'sigma': (sigma_key, cfg.blur_sigma_min, cfg.blur_sigma_max),
      'solarize': (solarize_key, 0., 1.),
  }
  keys, lows, highs = zip(*ranges.values())
  values = jax.vmap(lambda k, lo, hi: jax.random.uniform(k, (), jnp.float32, lo, hi))(
      jnp.stack(keys), jnp.array(lows, jnp.float32), jnp.array(highs, jnp.float32))
  order = jax.random.permutation(perm_key, 4)
  return dict(zip(ranges, values)), order


def _color_jitter(x: jax.Array, draws: dict[str, jax.Array], order: jax.Array,
                  cfg) -> jax.Array:
  """The 4 ops in the image's random order, clipped after each (spec 6.2)."""
  # An op with strength 0 is skipped (no clip either), as the official code does.
  identity_branch = 3
  op_to_branch = jnp.array([
      0 if cfg.brightness > 0 else identity_branch,
      1 if cfg.contrast > 0 else identity_branch,
      2 if cfg.saturation > 0 else identity_branch,
      2 if cfg.hue > 0 else identity_branch,
  ], jnp.int32)
  clip = lambda y: jnp.clip(y, 0., 1.)
  branches = (
      lambda y, op: clip(adjust_brightness(y, draws['brightness'])),
      lambda y, op: clip(adjust_contrast(y, draws['contrast'])),
      lambda y, op: clip(_adjust_hsv(  # saturation and hue share one HSV round trip
          y, jnp.where(op == SATURATION, draws['saturation'], 1.),
          jnp.where(op == HUE, draws['hue'], 0.))),
      lambda y, op: y,
  )

  def step(position, y):
    op = order[position]
    return jax.lax.switch(op_to_branch[op], branches, y, op)

  # A loop over the 4 positions keeps one copy of the ops in the graph.
  return jax.lax.fori_loop(0, 4, step, x)


def _color_transform(x: jax.Array, draws: dict[str, jax.Array], order: jax.Array,
                     cfg) -> jax.Array:
  """Jitter (p = color_jitter_prob), then grayscale (independent draw), then clip."""
  x = _maybe(_bernoulli(draws['jitter'], cfg.color_jitter_prob),
             lambda y: _color_jitter(y, draws, order, cfg), x)
  x = _maybe(_bernoulli(draws['grayscale'], cfg.grayscale_prob), to_grayscale, x)
  return jnp.clip(x, 0., 1.)


def _augment_image(op_keys: jax.Array, x: jax.Array, cfg) -> jax.Array:
  """One image [H, W, 3] float in [0, 1]: flip -> colour -> blur -> solarise -> clip."""
  draws, order = _draws(op_keys, cfg)
  x = _maybe(_bernoulli(draws['flip'], cfg.flip_prob), _flip_left_right, x)
  x = _maybe(_bernoulli(draws['color_apply'], cfg.color_apply_prob),
             lambda y: _color_transform(y, draws, order, cfg), x)
  kernel_size = blur_kernel_size(x.shape[0], cfg.blur_kernel_fraction)
  x = _maybe(_bernoulli(draws['blur_apply'], cfg.blur_prob),
             lambda y: gaussian_blur(y, draws['sigma'], kernel_size, cfg.blur_padding), x)
  x = _maybe(_bernoulli(draws['solarize'], cfg.solarize_prob),
             lambda y: solarize(y, cfg.solarize_threshold), x)
  return jnp.clip(x, 0., 1.)


def _as_typed_keys(keys: jax.Array, batch: int) -> jax.Array:
  if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
    if keys.shape != (batch,):
      raise ValueError(f'augment_view needs one key per image: keys shape {keys.shape}, '
                       f'expected ({batch},) for {batch} images.')
    return keys
  if keys.dtype != jnp.uint32 or keys.ndim != 2 or keys.shape[0] != batch:
    raise ValueError(f'augment_view needs one key per image: got keys of shape '
                     f'{keys.shape} and dtype {keys.dtype}; pass raw uint32 keys '
                     f'[{batch}, 2] or typed keys [{batch}] (jax.random.key).')
  return jax.random.wrap_key_data(keys)


def _as_float_images(images: jax.Array) -> jax.Array:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'augment_view expects RGB images [B, H, W, 3], got shape '
                     f'{images.shape}.')
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images.astype(jnp.float32)
  raise TypeError(f'augment_view expects uint8 or float images in [0, 1], got dtype '
                  f'{images.dtype}.')


def _augment_with_op_keys(op_keys: jax.Array, x: jax.Array, cfg) -> jax.Array:
  """op_keys: typed keys [B, 4] (flip, colour, blur, solarise) of each image."""
  out = jax.vmap(lambda k, y: _augment_image(k, y, cfg))(op_keys, x)
  chex.assert_shape(out, x.shape)
  return jax.lax.stop_gradient(out)


def augment_view(keys: jax.Array, images: jax.Array, cfg) -> jax.Array:
  """Augments a batch of crops [B, H, W, 3] (uint8, or float in [0, 1]) for one view.

  keys: one PRNG key per image (raw uint32 [B, 2] or typed [B]); image i's output
  depends only on keys[i], images[i] and cfg (its op keys are split(keys[i], 4)).
  Returns float32 [B, H, W, 3] in [0, 1] with stop_gradient applied.
  """
  validate_config(cfg)
  x = _as_float_images(images)
  keys = _as_typed_keys(keys, images.shape[0])
  return _augment_with_op_keys(jax.vmap(lambda k: jax.random.split(k, 4))(keys), x, cfg)


def augment_view_official(view_key: jax.Array, images: jax.Array, cfg) -> jax.Array:
  """The official code's key derivation for one view of one device's batch.

  view_key (raw uint32 [2] or typed) is split into (flip, colour, blur, solarise), and
  each of those into one key per image of the batch, as the official `postprocess`
  does; the per-image tree below that is shared with `augment_view`. Image i's
  augmentation therefore depends on the batch size and its position in the batch.
  """
  validate_config(cfg)
  x = _as_float_images(images)
  if not jax.dtypes.issubdtype(view_key.dtype, jax.dtypes.prng_key):
    view_key = jax.random.wrap_key_data(view_key)
  batch = images.shape[0]
  per_op = jax.vmap(lambda k: jax.random.split(k, batch))(jax.random.split(view_key, 4))
  return _augment_with_op_keys(jnp.swapaxes(per_op, 0, 1), x, cfg)


def official_view_keys(device_key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(view1, view2) keys from one device's step key, as the official `postprocess`."""
  return tuple(jax.random.split(device_key, 2))
