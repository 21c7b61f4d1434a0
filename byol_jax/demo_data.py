"""The built-in demo dataset: 10 classes of shapes, generated from a seed, no download.

It exists so that a new user sees BYOL learn something offline in minutes. The class is
carried by the *shape* only: every image draws its shape colour, position, scale and
rotation and its background colour (plus pixel noise) independently of its class, so
colour or position alone say nothing about the label. Shapes fill most of the image
(half-size 0.7-0.95 of the half-image) and the background is plain
(`_TEXTURE_CONTRAST = 0`): with smaller shapes on textured backgrounds, two crops of an
image mostly shared background, and a few hundred BYOL steps learned the background
instead of the shape (kNN stayed at chance; README, Results).

Pure numpy. Shape masks are rendered at 2x and box-filtered down (anti-aliased edges).
"""

from __future__ import annotations

import numpy as np

DEMO_CLASS_NAMES: tuple[str, ...] = (
    'disk', 'ring', 'square', 'diamond', 'triangle', 'star', 'plus',
    'horizontal_bars', 'vertical_bars', 'checkerboard')
NUM_CLASSES = len(DEMO_CLASS_NAMES)

# Classes whose look changes with a free rotation are rotated by at most this much, so
# that square/diamond, horizontal/vertical bars and plus/x-shapes stay distinct.
_SMALL_ROTATION = np.deg2rad(20.)
_FREE_ROTATION = frozenset({'disk', 'ring', 'triangle', 'star'})
_SUPERSAMPLE = 2
_TEXTURE_CONTRAST = 0.0  # > 0: textured backgrounds (stripes, gradients, blobs)
_SCALE_RANGE = (0.7, 0.95)  # shape half-size as a fraction of the half-image
_CHUNK = 1024  # images rendered at once; bounds memory (~10 float32 arrays of chunk*64^2)


def _stripes(t: np.ndarray, count: int) -> np.ndarray:
  """1 on `count` equal bands of [-1, 1] interleaved with count - 1 gaps, else 0."""
  band = np.floor((t + 1.) / 2. * (2 * count - 1))
  return (band >= 0) & (band <= 2 * count - 2) & (band % 2 == 0)


def shape_mask(class_index: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Boolean mask of a class's shape in its own frame: unit size, centred on (0, 0).

  u, v: coordinates (any shape), u to the right, v downwards; shapes fit in [-1, 1]^2.
  """
  if not 0 <= class_index < NUM_CLASSES:
    raise ValueError(f'class_index={class_index!r} is not in [0, {NUM_CLASSES}).')
  name = DEMO_CLASS_NAMES[class_index]
  radius = np.hypot(u, v)
  if name == 'disk':
    return radius <= 0.95
  if name == 'ring':
    return (radius <= 1.) & (radius >= 0.55)
  if name == 'square':
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8
  if name == 'diamond':
    return np.abs(u) + np.abs(v) <= 1.
  if name == 'triangle':  # equilateral, circumradius 1, a vertex pointing up
    angles = np.deg2rad([90., 210., 330.])
    inside = np.ones(np.broadcast(u, v).shape, bool)
    for a in angles:  # edge normals point away from the vertices, inradius 0.5
      inside &= -(u * np.cos(a) - v * np.sin(a)) <= 0.5
    return inside
  if name == 'star':  # five points, outer radius 1, inner radius 0.42
    sector = 2. * np.pi / 5.
    phi = np.mod(np.arctan2(-v, u) - np.pi / 2., sector) - sector / 2.
    # Inside the kite (origin, inner vertex, tip, inner vertex) of this point's sector.
    qx, qy = radius * np.cos(np.abs(phi)), radius * np.sin(np.abs(phi))
    ix, iy = 0.42 * np.cos(sector / 2.), 0.42 * np.sin(sector / 2.)
    return (ix - 1.) * qy - iy * (qx - 1.) >= 0.
  if name == 'plus':
    arm = 0.32
    return (((np.abs(u) <= arm) & (np.abs(v) <= 0.95)) |
            ((np.abs(v) <= arm) & (np.abs(u) <= 0.95)))
  if name == 'horizontal_bars':
    return (np.abs(u) <= 0.85) & _stripes(v / 0.85, 3)
  if name == 'vertical_bars':
    return (np.abs(v) <= 0.85) & _stripes(u / 0.85, 3)
  if name == 'checkerboard':
    cells = np.floor((u / 0.85 + 1.) * 1.5) + np.floor((v / 0.85 + 1.) * 1.5)
    return (np.maximum(np.abs(u), np.abs(v)) <= 0.85) & (cells % 2 == 0)
  raise AssertionError(f'no mask for class {name!r}')


def _background(rng: np.random.Generator, n: int, grid: np.ndarray) -> np.ndarray:
  """[n, S, S] float32 texture in [0, 1]: linear gradient, sine stripes or smooth blobs."""
  side = grid.shape[-1]
  kind = rng.integers(0, 3, n)[:, None, None]
  angle = rng.uniform(0., 2. * np.pi, n).astype(np.float32)[:, None, None]
  along = np.cos(angle) * grid[0] + np.sin(angle) * grid[1]  # in about [-1.4, 1.4]
  frequency = rng.uniform(2., 6., n).astype(np.float32)[:, None, None]
  phase = rng.uniform(0., 2. * np.pi, n).astype(np.float32)[:, None, None]
  coarse = rng.uniform(0., 1., (n, 5, 5)).astype(np.float32)
  texture = _upsample_bilinear(coarse, side)  # blobs
  gradient = kind == 0
  texture = np.where(gradient, np.clip(0.5 + 0.4 * along, 0., 1.), texture)
  stripes = kind == 1
  return np.where(stripes, 0.5 + 0.5 * np.sin(np.pi * frequency * along + phase), texture)


def _upsample_bilinear(coarse: np.ndarray, side: int) -> np.ndarray:
  """[n, k, k] -> [n, side, side] by bilinear interpolation over the whole image."""
  k = coarse.shape[-1]
  pos = np.linspace(0., k - 1., side)
  lo = np.minimum(np.floor(pos).astype(int), k - 2)
  frac = (pos - lo).astype(np.float32)
  rows = coarse[:, lo] * (1. - frac)[None, :, None] + coarse[:, lo + 1] * frac[None, :, None]
  return rows[:, :, lo] * (1. - frac) + rows[:, :, lo + 1] * frac


def _pixel_grid(side: int) -> np.ndarray:
  """[2, side, side] float32 (x, y) of pixel centres in [-1, 1]."""
  coords = (np.arange(side, dtype=np.float32) + 0.5) / side * 2. - 1.
  return np.stack(np.meshgrid(coords, coords, indexing='xy'))


def _coverage(rng: np.random.Generator, labels: np.ndarray, image_size: int) -> np.ndarray:
  """[n, image_size, image_size] float32 fraction of each pixel that the shape covers."""
  n = labels.shape[0]
  side = image_size * _SUPERSAMPLE
  grid = _pixel_grid(side)
  # Pose: half-size in _SCALE_RANGE of the half-image, centre kept so the shape stays in.
  scale = rng.uniform(*_SCALE_RANGE, n).astype(np.float32)
  centre = (rng.uniform(-1., 1., (n, 2)) * (1. - scale)[:, None]).astype(np.float32)
  free = np.isin(labels, [DEMO_CLASS_NAMES.index(c) for c in _FREE_ROTATION])
  angle = np.where(free, rng.uniform(-np.pi, np.pi, n),
                   rng.uniform(-_SMALL_ROTATION, _SMALL_ROTATION, n)).astype(np.float32)
  dx = (grid[0][None] - centre[:, 0, None, None]) / scale[:, None, None]
  dy = (grid[1][None] - centre[:, 1, None, None]) / scale[:, None, None]
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  u, v = cos * dx + sin * dy, cos * dy - sin * dx  # image frame -> shape frame
  mask = np.zeros((n, side, side), np.float32)
  for c in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == c)
    if idx.size:
      mask[idx] = shape_mask(c, u[idx], v[idx])
  # Box-filter the supersampled mask down: anti-aliased edges.
  return mask.reshape(n, image_size, _SUPERSAMPLE, image_size, _SUPERSAMPLE).mean(
      axis=(2, 4))


def _render_chunk(rng: np.random.Generator, labels: np.ndarray,
                  image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [n, S, S, 3] for the given labels, and their shape coverage [n, S, S]."""
  n = labels.shape[0]
  coverage = _coverage(rng, labels, image_size)
  # Background between two random colours at most _TEXTURE_CONTRAST apart per channel;
  # the shape colour is the farthest of 4 random candidates from the background's mean
  # colour, so the shape, not the texture, is the salient object.
  low = rng.uniform(0., 1., (n, 1, 1, 3)).astype(np.float32)
  high = np.clip(low + rng.uniform(-_TEXTURE_CONTRAST, _TEXTURE_CONTRAST, low.shape), 0.,
                 1.).astype(np.float32)
  texture = _background(rng, n, _pixel_grid(image_size))[..., None]
  background = low + (high - low) * texture
  candidates = rng.uniform(0., 1., (n, 4, 3)).astype(np.float32)
  base = (low + high)[:, 0, 0] / 2.
  far = np.argmax(np.linalg.norm(candidates - base[:, None], axis=-1), axis=1)
  colour = candidates[np.arange(n), far][:, None, None]
  image = background + coverage[..., None] * (colour - background)
  image += 0.03 * rng.standard_normal(image.shape, dtype=np.float32)
  return np.round(np.clip(image, 0., 1.) * 255.).astype(np.uint8), coverage


def render_demo_dataset(num_examples: int, seed: int, image_size: int = 32
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """make_demo_dataset plus each image's shape coverage, float32 [N, S, S] in [0, 1].

  The coverage is the ground truth of where the shape is; tests and figures use it.
  """
  if num_examples < 1:
    raise ValueError(f'num_examples={num_examples!r} must be >= 1.')
  if image_size < 8:
    raise ValueError(f'image_size={image_size!r} is too small to draw the shapes; use 8 '
                     'or more (32 is the default).')
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_examples) % NUM_CLASSES).astype(np.int32)
  images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
  coverage = np.empty((num_examples, image_size, image_size), np.float32)
  for start in range(0, num_examples, _CHUNK):
    stop = min(start + _CHUNK, num_examples)
    images[start:stop], coverage[start:stop] = _render_chunk(rng, labels[start:stop],
                                                             image_size)
  return images, labels, coverage


def make_demo_dataset(num_examples: int, seed: int,
                      image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Returns uint8 images [N, image_size, image_size, 3] and int32 labels [N].

  Classes are balanced (label = i % 10, then shuffled); the same (num_examples, seed,
  image_size) always gives the same bytes.
  """
  images, labels, _ = render_demo_dataset(num_examples, seed, image_size)
  return images, labels
