"""Device-side augmentations: TF semantics of each op, blur, key structure, probabilities."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import augmentations as aug

tf = pytest.importorskip('tensorflow')

# float32 ulp is 1.2e-7 at 1.0 and 2.4e-7 in [1, 2). Brightness, grayscale and the HSV
# conversions follow TF's arithmetic op for op (1 ulp allowed for fused multiply-adds);
# contrast (outputs up to ~1.5 unclipped) differs in the summation order of the mean;
# TF's saturation and hue kernels use their own HSV formulation (hue in [0, 6), min/max
# interpolation), so they agree to a few ulps (measured max 4.8e-7), not bitwise.
EXACT_ATOL = 2e-7
MEAN_ATOL = 1e-6
HSV_KERNEL_ATOL = 2e-6


def _random_image(seed: int, size: int = 24) -> np.ndarray:
  """Uniform RGB plus the corner cases of HSV: gray, black, white, primaries, ties."""
  x = np.random.default_rng(seed).uniform(size=(size, size, 3)).astype(np.float32)
  x[0, :7] = [[0.5] * 3, [0.] * 3, [1.] * 3, [1., 0., 0.], [0., 1., 0.], [0., 0., 1.],
              [1., 1., 0.]]
  x[1, :3] = [[0.3, 0.3, 0.7], [0.7, 0.3, 0.7], [0.2, 0.6, 0.6]]
  return x


@pytest.mark.parametrize('ours,theirs,param,atol', [
    (aug.adjust_brightness, tf.image.adjust_brightness, 0.31, EXACT_ATOL),
    (aug.adjust_brightness, tf.image.adjust_brightness, -0.27, EXACT_ATOL),
    (aug.adjust_contrast, tf.image.adjust_contrast, 1.37, MEAN_ATOL),
    (aug.adjust_contrast, tf.image.adjust_contrast, 0.62, MEAN_ATOL),
    (aug.adjust_saturation, tf.image.adjust_saturation, 1.19, HSV_KERNEL_ATOL),
    (aug.adjust_saturation, tf.image.adjust_saturation, 0.81, HSV_KERNEL_ATOL),
    (aug.adjust_hue, tf.image.adjust_hue, 0.093, HSV_KERNEL_ATOL),
    (aug.adjust_hue, tf.image.adjust_hue, -0.071, HSV_KERNEL_ATOL),
])
def test_color_op_matches_tf(ours, theirs, param, atol):
  for seed in range(3):
    x = _random_image(seed)
    got = np.asarray(jax.jit(ours)(x, param))
    want = theirs(x, param).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_hue_wraps_around_the_circle():
  x = _random_image(5)
  np.testing.assert_allclose(_OPS['adjust_hue'](x, 0.1), tf.image.adjust_hue(x, 0.1 - 1.).numpy(),
                             atol=HSV_KERNEL_ATOL)


def test_rgb_hsv_conversions_match_tf():
  x = _random_image(1)
  np.testing.assert_allclose(aug.rgb_to_hsv(x), tf.image.rgb_to_hsv(x).numpy(), rtol=0,
                             atol=EXACT_ATOL)
  hsv = np.random.default_rng(2).uniform(size=(24, 24, 3)).astype(np.float32)
  np.testing.assert_allclose(aug.hsv_to_rgb(hsv), tf.image.hsv_to_rgb(hsv).numpy(), rtol=0,
                             atol=EXACT_ATOL)
  # And a round trip is the identity.
  np.testing.assert_allclose(aug.hsv_to_rgb(aug.rgb_to_hsv(x)), x, atol=1e-6)


def test_grayscale_matches_tf_weights():
  x = _random_image(3)
  got = np.asarray(_OPS['to_grayscale'](x))
  assert got.shape == x.shape
  want = tf.image.rgb_to_grayscale(x).numpy()
  for c in range(3):
    np.testing.assert_allclose(got[..., c:c + 1], want, rtol=0, atol=EXACT_ATOL)
  np.testing.assert_allclose(got[..., 0], x @ np.array([0.2989, 0.5870, 0.1140], np.float32),
                             atol=1e-6)


def test_view_configs_follow_spec_table():
  view1, view2 = aug.view_config(1), aug.view_config(2)
  for cfg in (view1, view2):
    assert (cfg.flip_prob, cfg.color_jitter_prob, cfg.grayscale_prob) == (0.5, 0.8, 0.2)
    assert (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (cfg.blur_sigma_min, cfg.blur_sigma_max) == (0.1, 2.0)
    assert cfg.color_apply_prob == 1.0 and cfg.blur_padding == 'zero'
  assert (view1.blur_prob, view1.solarize_prob) == (1.0, 0.0)
  assert (view2.blur_prob, view2.solarize_prob) == (0.1, 0.2)
  with pytest.raises(ValueError, match='view'):
    aug.view_config(3)


def test_blur_kernel_size_and_normalisation():
  fraction = aug.view_config(1).blur_kernel_fraction
  assert [aug.blur_kernel_size(s, fraction) for s in (224, 128, 96, 64, 32)] == [
      23, 13, 9, 7, 3]
  for sigma in (0.1, 1.0, 2.0):
    w = np.asarray(aug.gaussian_kernel(sigma, 23))
    assert w.shape == (23,)
    np.testing.assert_allclose(w.sum(), 1., atol=1e-6)
    np.testing.assert_allclose(w, w[::-1])
    assert w.argmax() == 11


def test_blur_of_constant_image_darkens_only_the_zero_padded_border():
  x = jnp.full((16, 16, 3), 0.7, jnp.float32)
  zero = np.asarray(aug.gaussian_blur(x, 1.5, 7, 'zero'))
  np.testing.assert_allclose(zero[3:-3, 3:-3], 0.7, atol=1e-6)
  for border in (zero[0], zero[-1], zero[:, 0], zero[:, -1]):
    assert np.all(border < 0.7 - 1e-3)
  np.testing.assert_allclose(aug.gaussian_blur(x, 1.5, 7, 'reflect'), 0.7, atol=1e-6)


@pytest.mark.parametrize('padding', ['zero', 'reflect'])
def test_blur_matches_direct_2d_convolution(padding):
  x = _random_image(4, size=13)
  sigma, size = 1.3, 7
  r = size // 2
  t = np.arange(-r, r + 1, dtype=np.float64)
  w = np.exp(-t**2 / (2 * sigma**2))
  kernel = np.outer(w, w) / w.sum()**2
  mode = 'constant' if padding == 'zero' else 'reflect'
  padded = np.pad(x.astype(np.float64), ((r, r), (r, r), (0, 0)), mode=mode)
  want = np.zeros_like(x, dtype=np.float64)
  for i in range(size):
    for j in range(size):
      want += kernel[i, j] * padded[i:i + 13, j:j + 13]
  got = aug.gaussian_blur(x, sigma, size, padding)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_blur_rejects_bad_arguments():
  x = jnp.zeros((4, 4, 3))
  with pytest.raises(ValueError, match='odd'):
    aug.gaussian_blur(x, 1., 4)
  with pytest.raises(ValueError, match='reflect'):
    aug.gaussian_blur(x, 1., 9, 'reflect')
  with pytest.raises(ValueError, match='padding'):
    aug.gaussian_blur(x, 1., 3, 'wrap')


def test_solarize_and_flip():
  x = jnp.array([0., 0.2, 0.49, 0.5, 0.8, 1.], jnp.float32).reshape(1, 2, 3)
  np.testing.assert_allclose(aug.solarize(x, 0.5).ravel(), [0., 0.2, 0.49, 0.5, 0.2, 0.])
  key = jax.random.key(0)
  img = jnp.asarray(_random_image(0, 8))
  np.testing.assert_array_equal(aug.random_flip(key, img, 1.), img[:, ::-1])
  np.testing.assert_array_equal(aug.random_flip(key, img, 0.), img)


# ------------------------------------------------------------------------ augment_view
# Compiles dominate this file's time, so the tests share one geometry (N images of 16 px)
# and a few configs; running N = 2000 images costs well under a second.

N, SIZE = 2000, 16
# At 16 px the default fraction gives a 1-tap kernel; 0.2 gives 3 taps.
FULL = dict(blur_kernel_fraction=0.2)
NO_COLOR = dict(color_apply_prob=0., blur_kernel_fraction=0.2)
ONLY_COLOR = dict(flip_prob=0., grayscale_prob=0., blur_prob=0., solarize_prob=0.)


def _cfg(view: int, **overrides):
  cfg = aug.view_config(view)
  cfg.update(overrides)
  return cfg


@functools.lru_cache(maxsize=None)
def _compiled(view, overrides):
  cfg = _cfg(view, **dict(overrides))
  return jax.jit(lambda k, x: aug.augment_view(k, x, cfg))


def _augment(keys, images, view, **overrides):
  return np.asarray(_compiled(view, tuple(sorted(overrides.items())))(keys, images))


@functools.lru_cache(maxsize=None)
def _batch():
  images = np.random.default_rng(3).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
  return jax.random.split(jax.random.key(2024), N), images


def _changed(out, images):
  return np.any(np.abs(out - images / np.float32(255.)) > 1e-6, axis=(1, 2, 3))


# View 1 differs from view 2 only in blur (always) and solarisation (never); without
# colour it reuses the compile of the probability test.
@pytest.mark.parametrize('view,overrides', [(1, NO_COLOR), (2, FULL)])
def test_augment_view_range_dtype_shape_and_determinism(view, overrides):
  keys, images = _batch()
  out = _compiled(view, tuple(sorted(overrides.items())))(keys, images)
  assert out.dtype == jnp.float32 and out.shape == images.shape
  assert float(out.min()) >= 0. and float(out.max()) <= 1.
  np.testing.assert_array_equal(out, _augment(keys, images, view, **overrides))
  other = _augment(jax.random.split(jax.random.key(8), N), images, view, **overrides)
  assert not np.allclose(out, other)


def test_image_result_is_independent_of_its_batch():
  keys, images = _batch()
  full = _augment(keys, images, 2, **FULL)
  perm = np.random.default_rng(0).permutation(N)
  np.testing.assert_allclose(_augment(keys[perm], images[perm], 2, **FULL), full[perm],
                             atol=1e-6)
  # A sub-batch (another vmap width, as on another device count), given in the other
  # accepted forms: raw uint32 keys with the same bits and float images in [0, 1]. One
  # compile also checks that no gradient flows back into the images.
  cfg = _cfg(2, **FULL)
  x = images[5:9] / np.float32(255.)
  value, grad = jax.jit(jax.value_and_grad(
      lambda y: jnp.sum(aug.augment_view(jax.random.key_data(keys[5:9]), y, cfg) * y)))(x)
  np.testing.assert_allclose(value, np.sum(full[5:9] * x), rtol=1e-5)
  np.testing.assert_allclose(grad, full[5:9], atol=1e-5)  # d/dx sum(sg(f(x)) x) = f(x)


# Jitted once each: op-by-op dispatch of the reference would compile every primitive.
_OPS = {name: jax.jit(getattr(aug, name)) for name in (
    'adjust_brightness', 'adjust_contrast', 'adjust_saturation', 'adjust_hue',
    'to_grayscale', 'solarize')}
_BLUR = jax.jit(aug.gaussian_blur, static_argnums=(2, 3))


def _reference_augment(op_keys, image: np.ndarray, cfg, fired: dict) -> np.ndarray:
  """Spec 6.2/6.3 written out with Python branches on concrete draws, one image.

  op_keys: the image's (flip, colour, blur, solarise) keys, as the official
  `postprocess` hands them to its per-op functions.
  """
  def bern(name, k, p):
    hit = p > 0 and float(jax.random.uniform(k, (), jnp.float32)) <= p
    fired.setdefault(name, set()).add(hit)
    return hit

  def unif(k, lo, hi):
    return jax.random.uniform(k, (), jnp.float32, minval=lo, maxval=hi)

  x = jnp.asarray(image, jnp.float32) / 255.
  flip_key, color_key, blur_key, solarize_key = op_keys
  if bern('flip', jax.random.split(flip_key)[1], cfg.flip_prob):  # official: 2nd half
    x = x[:, ::-1]
  apply_key, transform_key = jax.random.split(color_key)
  if bern('color', apply_key, cfg.color_apply_prob):
    perm_key, b_key, c_key, s_key, h_key, jitter_key, gray_key = jax.random.split(
        transform_key, 7)
    ops = [
        lambda y: _OPS['adjust_brightness'](
            y, unif(b_key, -cfg.brightness, cfg.brightness)),
        lambda y: _OPS['adjust_contrast'](
            y, unif(c_key, 1 - cfg.contrast, 1 + cfg.contrast)),
        lambda y: _OPS['adjust_saturation'](
            y, unif(s_key, 1 - cfg.saturation, 1 + cfg.saturation)),
        lambda y: _OPS['adjust_hue'](y, unif(h_key, -cfg.hue, cfg.hue)),
    ]
    if bern('jitter', jitter_key, cfg.color_jitter_prob):
      for op in np.asarray(jax.random.permutation(perm_key, 4)):
        x = jnp.clip(ops[op](x), 0., 1.)
    if bern('gray', gray_key, cfg.grayscale_prob):
      x = _OPS['to_grayscale'](x)
    x = jnp.clip(x, 0., 1.)
  apply_key, transform_key = jax.random.split(blur_key)
  if bern('blur', apply_key, cfg.blur_prob):
    size = aug.blur_kernel_size(x.shape[0], cfg.blur_kernel_fraction)
    sigma_key = jax.random.split(transform_key, 1)[0]  # official: split(transform, 1)
    x = _BLUR(x, unif(sigma_key, cfg.blur_sigma_min, cfg.blur_sigma_max), size,
              cfg.blur_padding)
  if bern('solarize', solarize_key, cfg.solarize_prob):
    x = _OPS['solarize'](x, cfg.solarize_threshold)
  return np.asarray(jnp.clip(x, 0., 1.))


@pytest.mark.parametrize('view,overrides,count', [(1, NO_COLOR, 8), (2, FULL, 40)])
def test_matches_sequential_reference_of_the_spec(view, overrides, count):
  """Key layout, op order and per-image permutation, against branchy reference code."""
  keys, images = _batch()
  out = _augment(keys, images, view, **overrides)
  cfg, fired = _cfg(view, **overrides), {}
  for i in range(count):
    np.testing.assert_allclose(
        out[i], _reference_augment(jax.random.split(keys[i], 4), images[i], cfg, fired),
        atol=2e-6, err_msg=f'image {i}')
  # The compared images took every random branch both ways, except the fixed ones.
  if view == 1:
    assert fired.pop('color') == {False} and fired.pop('blur') == {True}
    assert fired.pop('solarize') == {False}
  else:
    assert fired.pop('color') == {True}
  assert all(v == {True, False} for v in fired.values()), fired


def test_official_key_derivation_matches_the_reference():
  """augmentation.rng='official': one key per view and device, split per op, then per
  image (the official `postprocess`), below which the per-image tree is the same."""
  _, images = _batch()
  batch, view_key = 48, jax.random.key(7)
  cfg, fired = _cfg(2, **FULL), {}
  out = np.asarray(jax.jit(lambda k, x: aug.augment_view_official(k, x, cfg))(
      view_key, images[:batch]))
  per_op = [jax.random.split(k, batch) for k in jax.random.split(view_key, 4)]
  for i in range(batch):
    np.testing.assert_allclose(
        out[i], _reference_augment([keys[i] for keys in per_op], images[i], cfg, fired),
        atol=2e-6, err_msg=f'image {i}')
  assert fired.pop('color') == {True}
  assert all(v == {True, False} for v in fired.values()), fired
  # Raw uint32 keys give the same result; official_view_keys is split(device_key, 2).
  raw = aug.augment_view_official(jax.random.key_data(view_key), images[:batch], cfg)
  np.testing.assert_allclose(raw, out, atol=1e-6)
  device_key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(np.stack(aug.official_view_keys(device_key)),
                                jax.random.split(device_key, 2))


def test_probabilities_are_respected():
  """Fixed seed, so deterministic; tolerances are ~5 binomial standard deviations."""
  keys, images = _batch()
  x = images / np.float32(255.)
  fraction = lambda pred: float(np.mean(pred))
  near = lambda a, b: np.all(np.abs(a - b) < 1e-6, axis=(1, 2, 3))

  # Grayscale: an image is gray iff the channels agree everywhere (blur/solarise keep that).
  out = _augment(keys, images, 2, **FULL)
  gray = np.all(np.abs(out - out[..., :1]) < 1e-6, axis=(1, 2, 3))
  assert abs(fraction(gray) - 0.2) < 0.045
  # Jitter alone changes the image with p = 0.8.
  jittered = _changed(_augment(keys, images, 2, **ONLY_COLOR), images)
  assert abs(fraction(jittered) - 0.8) < 0.045

  # Without colour, each output is one of the 8 images sol?(blur?(flip?(x))), and the one
  # it matches says what fired. Each image's sigma comes from its key (spec 6.3).
  # Blur key -> (apply, transform); sigma from split(transform, 1)[0], as the official.
  sigmas = jax.vmap(lambda k: jax.random.uniform(
      jax.random.split(jax.random.split(jax.random.split(k, 4)[2])[1], 1)[0], (),
      jnp.float32, 0.1, 2.0))(keys)
  blur = jax.jit(jax.vmap(lambda y, s: aug.gaussian_blur(y, s, 3)))
  candidates = {}
  for flip in (False, True):
    y = x[:, :, ::-1] if flip else x
    for blurred in (False, True):
      z = np.asarray(blur(y, sigmas)) if blurred else y
      for solarized in (False, True):
        candidates[flip, blurred, solarized] = aug.solarize(z) if solarized else z
  # Blur is invisible for sigma near 0.1, so blur is only counted where it shows.
  visible = ~near(candidates[False, True, False], x)

  def fired(out, op):
    matches = {c: near(out, v) for c, v in candidates.items()}
    assert np.all(np.any(list(matches.values()), axis=0)), 'an output matches no candidate'
    return np.any([m for c, m in matches.items() if c[op]], axis=0)

  out = _augment(keys, images, 2, **NO_COLOR)
  assert abs(fraction(fired(out, 0)) - 0.5) < 0.06
  assert abs(fraction(fired(out, 1) & visible) / fraction(visible) - 0.1) < 0.035
  assert abs(fraction(fired(out, 2)) - 0.2) < 0.045
  # View 1 always blurs and never solarises.
  out = _augment(keys, images, 1, **NO_COLOR)
  assert np.all(fired(out, 1) | ~visible) and fraction(visible) > 0.9
  assert not np.any(fired(out, 2))


def test_bad_inputs_are_named():
  keys, images = _batch()
  keys, images = keys[:2], images[:2]
  with pytest.raises(ValueError, match='one key per image'):
    aug.augment_view(keys[:1], images, aug.view_config(1))
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    aug.augment_view(keys, images[..., :2], aug.view_config(1))
  with pytest.raises(TypeError, match='uint8 or float'):
    aug.augment_view(keys, images.astype(np.int32), aug.view_config(1))
  with pytest.raises(ValueError, match='blur_prob'):
    aug.augment_view(keys, images, _cfg(1, blur_prob=1.5))
  with pytest.raises(ValueError, match='blur_padding'):
    aug.augment_view(keys, images, _cfg(1, blur_padding='wrap'))
