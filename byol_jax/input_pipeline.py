"""Host-side input pipelines: images -> uint8 crops -> batches on the devices.

Follows spec section 5 (order of operations, crops of 5.6, per-host sharding of
5.2) with the fixes recommended in 11.8-10 and 11.13:
  * images leave the host as uint8 (bicubic resize on host, rounded and clipped
    to [0, 255]: 4x fewer bytes than the official float32; the clip happens in
    uint8 rather than after /255, which is the same up to rounding);
  * crops and flips are stateless and seeded from (seed, process, epoch,
    position in epoch), so a stream is reproducible and resumable exactly;
  * training shuffles files (seeded) and examples through a buffer, reshuffled
    every epoch, in deterministic order (`options.deterministic = True`); an
    epoch is the host's shard once, less a remainder smaller than its batch
    (a different one each epoch), and all epochs run in one tf.data pipeline,
    so there is no pause between them;
  * evaluation reads every example exactly once across all processes and
    devices, padding the last batch and marking padding with mask=False.

JPEG bytes are decoded and cropped in one op (`tf.image.decode_and_crop_jpeg`,
shape from `tf.image.extract_jpeg_shape`); other encodings (TFDS stores CIFAR as
PNG) are decoded, then cropped. Grayscale and RGBA images come out RGB.

`data_config` (an `ml_collections.ConfigDict`) fields:
  dataset:            a TFDS name (`cifar10`, `cifar100`, `stl10`,
                      `imagenette/160px-v2`, `imagenet2012`, any TFDS dataset
                      with an Image and a ClassLabel feature), a name given to
                      `python -m byol_jax.prepare_folder`, or 'demo' (the
                      in-memory synthetic set of `byol_jax.demo_data`).
  data_dir:           TFDS data directory (str), or None for TFDS's default.
  train_split, eval_split, test_split:
                      TFDS split strings, e.g. 'train[:45000]',
                      'train[45000:]', 'test', 'unlabelled+train' (stl10).
                      The caller passes the one it wants as `split=`;
                      `pretrain_batches` reads `train_split`.
  image_size:         side S of the square output crops (32 CIFAR, 224 ImageNet).
  crop_sampler:       'official' (default): single attempt, sides clamped
                      independently (spec 5.6); 'inception': up to 10 attempts
                      that must fit, else a centre crop (Inception /
                      RandomResizedCrop style).
  crop_area_range:    (0.08, 1.0) fraction of the image area.
  crop_aspect_range:  (3/4, 4/3) width/height, sampled log-uniformly.
  eval_crop_fraction: 0.875: eval centre-crop side over the short side.
  shuffle_buffer:     examples in the shuffle buffer (capped at the shard size).
  skip_corrupt:       read by the train CLI when it prepares a folder (passed to
                      `prepare_folder.prepare`); stored images were checked
                      then, so the pipeline itself never skips examples.
Optional fields (defaults in `_DEFAULTS`):
  num_parallel_calls: tf.data map parallelism, -1 = AUTOTUNE.
  download:           False (default): never download; an unprepared TFDS
                      dataset is an error saying how to prepare it. True: try
                      TFDS's download_and_prepare, and say so if it fails.
  demo_train_examples, demo_test_examples, demo_image_size: size of the 'demo'
                      splits 'train' (demo seed 0) and 'test' (demo seed 1).

Multi-host: process `jax.process_index()` of `jax.process_count()` reads the
contiguous near-equal chunk `process_index` of the split (numpy array_split
boundaries). Every function accepts `process_index`, `process_count` and
`local_device_count` overrides so tests can simulate several hosts.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import os
import types
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

_DEFAULTS = dict(
    data_dir=None,
    crop_sampler='official',
    crop_area_range=(0.08, 1.0),
    crop_aspect_range=(3. / 4., 4. / 3.),
    eval_crop_fraction=0.875,
    shuffle_buffer=10_000,
    num_parallel_calls=-1,
    download=False,
    demo_train_examples=2560,
    demo_test_examples=512,
    demo_image_size=32,
)
_INCEPTION_ATTEMPTS = 10
# Uniforms per crop: 'official' uses 4 (area, log ratio, x, y); 'inception'
# uses 2 per attempt and 2 offsets. One count for both keeps streams aligned.
_CROP_UNIFORMS = 2 * _INCEPTION_ATTEMPTS + 2
_MODES = ('pretrain', 'linear_train')
_PREPARE_HINT = ('python -m byol_jax.prepare_folder --source=<folder or '
                 '.tar/.tar.gz laid out split/class/image> --name={name} '
                 '--data_dir=<dir>')

Batch = dict[str, np.ndarray]


class DatasetNotFoundError(FileNotFoundError):
  """The dataset (or its data_dir) is not there; the message says how to fix."""


# tf.data would try (and, for closures and lambdas, fail noisily) to convert these
# plain TF functions with AutoGraph; they need no conversion.
_no_autograph = tf.autograph.experimental.do_not_convert


def _get(cfg: ml_collections.ConfigDict, name: str) -> Any:
  return cfg.get(name, _DEFAULTS.get(name))


# --------------------------------------------------------- hosts, batches ---

@dataclasses.dataclass(frozen=True)
class HostLayout:
  """Where this process sits and how a global batch splits onto its devices."""
  process_index: int
  process_count: int
  local_devices: int
  per_device_batch: int

  @property
  def per_host_batch(self) -> int:
    return self.local_devices * self.per_device_batch


def host_layout(global_batch_size: int, *, process_index: int | None = None,
                process_count: int | None = None,
                local_device_count: int | None = None) -> HostLayout:
  """Checks that the global batch divides across all devices (spec 5.3)."""
  process_index = (jax.process_index() if process_index is None
                   else process_index)
  process_count = (jax.process_count() if process_count is None
                   else process_count)
  local = (jax.local_device_count() if local_device_count is None
           else local_device_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in '
                     f'[0, process_count={process_count}).')
  devices = local * process_count  # jax.device_count() on pmap's equal hosts
  if global_batch_size <= 0 or global_batch_size % devices:
    lower = max(devices, global_batch_size - global_batch_size % devices)
    upper = global_batch_size + devices - global_batch_size % devices
    raise ValueError(
        f'Global batch size {global_batch_size} does not divide across the '
        f'{devices} devices ({process_count} process(es) x {local} local '
        f'devices). Use a multiple of {devices}, e.g. {lower} or {upper}.')
  return HostLayout(process_index, process_count, local,
                    global_batch_size // devices)


# ---------------------------------------------------------------- splits ---

@dataclasses.dataclass(frozen=True)
class _Range:
  split: str
  start: int
  stop: int


def _shard(ranges: Sequence[_Range], index: int, count: int) -> list[_Range]:
  """Chunk `index` of `count` near-equal chunks (np.array_split boundaries)."""
  total = sum(r.stop - r.start for r in ranges)
  size, extra = divmod(total, count)
  lo = index * size + min(index, extra)
  hi = lo + size + (1 if index < extra else 0)
  out, offset = [], 0
  for r in ranges:
    n = r.stop - r.start
    a, b = max(lo - offset, 0), min(hi - offset, n)
    if a < b:
      out.append(_Range(r.split, r.start + a, r.start + b))
    offset += n
  return out


def _num(ranges: Sequence[_Range]) -> int:
  return sum(r.stop - r.start for r in ranges)


# --------------------------------------------------------------- sources ---

# More ranges than this are read in one filtered sequential pass (see
# _tfds_source's _sparse_reader).
_MAX_READ_RANGES = 64

# reader(file_seed) -> tf.data.Dataset of {'image': encoded bytes (tf.string)
# or uint8 [H, W, C], 'label': int32}. file_seed: int64 [2] tensor (files, or
# examples when in memory, in a seeded order) or None (stored order). Callable
# inside tf.data functions, so one pipeline serves every epoch.
Reader = Callable[[tf.Tensor | None], tf.data.Dataset]


@dataclasses.dataclass(frozen=True)
class _Source:
  """A dataset as the pipeline needs it: split sizes, classes, a reader."""
  name: str
  split_infos: Mapping[str, Any]  # split name -> has .num_examples
  num_classes: int
  reader: Callable[[Sequence[_Range]], Reader]
  # 'jpeg': every image is JPEG bytes (fused decode and crop, no branch);
  # 'any': encoded bytes, sniffed per image; 'pixels': uint8 arrays.
  image_format: str

  def resolve(self, split: str) -> list[_Range]:
    """TFDS split syntax (slices, '+', percentages) -> absolute ranges."""
    try:
      # One part at a time: TFDS parses 'a+b+...' recursively, which overflows
      # the stack for the thousands of slices of a label subset.
      instructions = [
          ins for part in split.split('+')
          for ins in tfds.core.ReadInstruction.from_spec(part).to_absolute(
              self.split_infos)]
    except (ValueError, NotImplementedError, KeyError, AttributeError) as e:
      raise ValueError(
          f'Bad split {split!r} for dataset {self.name!r}: {e} Splits: '
          + ', '.join(f'{k} ({v.num_examples} examples)'
                      for k, v in self.split_infos.items())) from None
    ranges = []
    for ins in instructions:
      n = self.split_infos[ins.splitname].num_examples
      start = ins.from_ or 0
      stop = n if ins.to is None else ins.to
      if stop > start:
        ranges.append(_Range(ins.splitname, start, stop))
    return ranges


def _read_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return options


def _load_builder(name: str, data_dir: str | None,
                  download: bool) -> tfds.core.DatasetBuilder:
  """tfds.builder that never hangs on the network and explains failures."""
  if data_dir is not None and not tf.io.gfile.isdir(data_dir):
    raise DatasetNotFoundError(
        f'data_dir={data_dir!r} does not exist. Point data.data_dir at the '
        'TFDS data directory that holds the prepared dataset: the --data_dir '
        f'given to `{_PREPARE_HINT.format(name=name)}` for your own images, '
        f'or to `tfds build {name} --data_dir=<dir>` for a TFDS dataset.')
  where = data_dir or 'the default TFDS data_dir (~/tensorflow_datasets)'
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetNotFoundError(
        f'Unknown dataset {name!r}: it is not a TFDS catalogue name and no '
        f'dataset of that name is prepared in {where}. For your own images '
        f'run `{_PREPARE_HINT.format(name=name)}` and set data.data_dir to '
        "that <dir>; or use 'demo' for the built-in synthetic set.") from None
  if builder.is_prepared():
    return builder
  manual = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  how = (f'Prepare it on a machine with internet access (`tfds build {name} '
         '--data_dir=<dir>`) and copy <dir> here, then set data.data_dir.')
  if manual:
    how = (f'{name!r} needs a manual download: place the files TFDS asks for '
           f'in <dir>/downloads/manual, run `tfds build {name} '
           '--data_dir=<dir> --manual_dir=<dir>/downloads/manual`, then set '
           f'data.data_dir=<dir>. TFDS says:\n{manual.strip()}')
  if not download:
    raise DatasetNotFoundError(
        f'TFDS dataset {name!r} is not prepared in {where} and downloading is '
        'off (data.download=False; this pipeline never downloads unless '
        f'asked). {how}')
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetNotFoundError(
        f'TFDS download of {name!r} into {where} failed ({type(e).__name__}: '
        f'{e}). {how}') from e
  return builder


def _feature_key(features, kind, preferred: str, dataset: str) -> str:
  keys = [k for k, f in features.items() if isinstance(f, kind)]
  if preferred in keys:
    return preferred
  if len(keys) == 1:
    return keys[0]
  raise ValueError(
      f'Dataset {dataset!r} has no single {kind.__name__} feature to use as '
      f"{preferred!r} (features: {list(features)}). The pipeline needs an "
      'image classification dataset with one Image and one ClassLabel.')


@functools.lru_cache(maxsize=None)
def _tfds_source(name: str, data_dir: str | None, download: bool) -> _Source:
  """Reads the TFDS record files directly, images left encoded.

  Reading the files ourselves (as TFDS's reader does) lets the file order be
  shuffled by a seed tensor, so every epoch lives in one tf.data pipeline.
  """
  builder = _load_builder(name, data_dir, download)
  info = builder.info
  if info.file_format not in (None, tfds.core.FileFormat.TFRECORD):
    raise ValueError(f'Dataset {name!r} is stored as {info.file_format}; the '
                     'pipeline reads TFRecord datasets (the TFDS default).')
  image_key = _feature_key(info.features, tfds.features.Image, 'image', name)
  label_key = _feature_key(info.features, tfds.features.ClassLabel, 'label',
                           name)
  features = tfds.features.FeaturesDict({
      image_key: info.features[image_key],
      label_key: info.features[label_key]})

  @tf.autograph.experimental.do_not_convert
  def parse(record):
    ex = features.deserialize_example(
        record, decoders={image_key: tfds.decode.SkipDecoding()})
    return {'image': ex[image_key], 'label': tf.cast(ex[label_key], tf.int32)}

  def reader(ranges: Sequence[_Range]) -> Reader:
    if len(ranges) > _MAX_READ_RANGES:
      return _sparse_reader(ranges)
    files = [f for r in ranges for f in
             info.splits[f'{r.split}[{r.start}:{r.stop}]'].file_instructions]
    names = tf.constant([f.filename for f in files])
    skips = tf.constant([f.skip for f in files], tf.int64)
    takes = tf.constant([f.take for f in files], tf.int64)

    def read(file_seed):
      order = tf.range(len(files), dtype=tf.int64)
      if file_seed is not None:
        order = tf.random.experimental.stateless_shuffle(order, file_seed)
      ds = tf.data.Dataset.from_tensor_slices(order).interleave(
          _no_autograph(lambda j: tf.data.TFRecordDataset(
              names[j], buffer_size=8 << 20).skip(skips[j]).take(takes[j])),
          cycle_length=min(16, len(files)), block_length=16,
          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

    return read

  def _sparse_reader(ranges: Sequence[_Range]) -> Reader:
    """Many scattered ranges (a label subset): one sequential pass over the
    records that cover them, keeping the chosen positions. Skipping to each
    range separately would re-read the files once per range. The records come
    in stored order whatever the seed; the shuffle buffer (the whole subset
    when it fits) does the mixing."""
    parts = []
    for name in dict.fromkeys(r.split for r in ranges):
      mine = [r for r in ranges if r.split == name]
      lo, hi = min(r.start for r in mine), max(r.stop for r in mine)
      keep = np.zeros(hi - lo, bool)
      for r in mine:
        keep[r.start - lo:r.stop - lo] = True
      files = info.splits[f'{name}[{lo}:{hi}]'].file_instructions
      parts.append(([f.filename for f in files], [f.skip for f in files],
                    [f.take for f in files], tf.constant(keep)))

    def read(file_seed):
      del file_seed
      out = None
      for names, skips, takes, keep in parts:
        ds = tf.data.Dataset.from_tensor_slices(
            (names, tf.constant(skips, tf.int64), tf.constant(takes, tf.int64)))
        ds = ds.flat_map(_no_autograph(lambda n, s, t: tf.data.TFRecordDataset(
            n, buffer_size=8 << 20).skip(s).take(t))).enumerate()
        ds = ds.filter(_no_autograph(lambda i, _, k=keep: tf.gather(k, i)))
        ds = ds.map(_no_autograph(lambda _, record: record))
        out = ds if out is None else out.concatenate(ds)
      return out.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

    return read

  # TFDS catalogue datasets that declare JPEG (imagenet2012, imagenette) and
  # prepare_folder's all-JPEG datasets hold only JPEG bytes; others may mix.
  jpeg = info.features[image_key].encoding_format == 'jpeg'
  return _Source(name=name, split_infos=info.splits,
                 num_classes=info.features[label_key].num_classes,
                 reader=reader, image_format='jpeg' if jpeg else 'any')


def _demo_generator():
  """(make_demo_dataset, DEMO_CLASS_NAMES), imported lazily (tests patch it)."""
  from byol_jax import demo_data  # pylint: disable=g-import-not-at-top
  return demo_data.make_demo_dataset, demo_data.DEMO_CLASS_NAMES


@functools.lru_cache(maxsize=4)
def _demo_arrays(make: Callable[..., Any], num: int, seed: int,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
  """Generated once per (generator, size, seed) and kept in memory."""
  return make(num, seed, image_size=size)


def _demo_source(cfg: ml_collections.ConfigDict) -> _Source:
  """The in-memory demo set; 'file' shuffling is a full permutation."""
  make, class_names = _demo_generator()
  size = _get(cfg, 'demo_image_size')
  arrays = {
      'train': _demo_arrays(make, _get(cfg, 'demo_train_examples'), 0, size),
      'test': _demo_arrays(make, _get(cfg, 'demo_test_examples'), 1, size),
  }
  infos = {k: types.SimpleNamespace(num_examples=len(v[1]),
                                    shard_lengths=[len(v[1])])
           for k, v in arrays.items()}

  def reader(ranges: Sequence[_Range]) -> Reader:
    images = tf.constant(np.concatenate(
        [arrays[r.split][0][r.start:r.stop] for r in ranges]))
    labels = tf.constant(np.concatenate(
        [arrays[r.split][1][r.start:r.stop] for r in ranges]).astype(np.int32))

    def read(file_seed):
      order = tf.range(tf.shape(labels, out_type=tf.int64)[0])
      if file_seed is not None:
        order = tf.random.experimental.stateless_shuffle(order, file_seed)
      return tf.data.Dataset.from_tensor_slices(order).map(_no_autograph(
          lambda i: {'image': tf.gather(images, i),
                     'label': tf.gather(labels, i)}))

    return read

  return _Source(name='demo', split_infos=infos,
                 num_classes=len(class_names), reader=reader,
                 image_format='pixels')


def _source(cfg: ml_collections.ConfigDict) -> _Source:
  if cfg.dataset == 'demo':
    return _demo_source(cfg)
  data_dir = _get(cfg, 'data_dir')
  if data_dir is not None:
    data_dir = os.path.expanduser(str(data_dir))
  return _tfds_source(cfg.dataset, data_dir, bool(_get(cfg, 'download')))


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in `split`, all processes together."""
  return _num(_source(data_config).resolve(split))


def num_classes(data_config: ml_collections.ConfigDict) -> int:
  return _source(data_config).num_classes


# ----------------------------------------------------------------- crops ---

def _check_sampler(cfg: ml_collections.ConfigDict) -> str:
  sampler = _get(cfg, 'crop_sampler')
  if sampler not in ('official', 'inception'):
    raise ValueError(f"data.crop_sampler={sampler!r}: use 'official' or "
                     "'inception'.")
  return sampler


def crop_window(image_hw: tf.Tensor, uniforms: tf.Tensor,
                data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """Random crop window (y, x, h, w) int32 [..., 4] per spec 5.6.

  image_hw: int [..., 2] (height, width). uniforms: float32 [...,
  _CROP_UNIFORMS] in [0, 1). Leading axes broadcast, so one call can sample
  many windows (tests use that). Sides are at least 1 pixel.
  """
  sampler = _check_sampler(data_config)
  a0, a1 = _get(data_config, 'crop_area_range')
  r0, r1 = (math.log(x) for x in _get(data_config, 'crop_aspect_range'))
  hw = tf.cast(image_hw, tf.float32)
  height, width = hw[..., 0], hw[..., 1]

  def sides(u_area, u_ratio):
    area = (a0 + (a1 - a0) * u_area) * height * width
    ratio = tf.exp(r0 + (r1 - r0) * u_ratio)
    return tf.round(tf.sqrt(area / ratio)), tf.round(tf.sqrt(area * ratio))

  if sampler == 'official':
    h, w = sides(uniforms[..., 0], uniforms[..., 1])
    h = tf.clip_by_value(h, 1., height)  # clamped independently (spec 5.6)
    w = tf.clip_by_value(w, 1., width)
  else:
    attempts = tf.reshape(uniforms[..., :2 * _INCEPTION_ATTEMPTS],
                          tf.concat([tf.shape(uniforms)[:-1],
                                     [_INCEPTION_ATTEMPTS, 2]], 0))
    hs, ws = sides(attempts[..., 0], attempts[..., 1])
    fits = ((hs >= 1.) & (hs <= height[..., None]) & (ws >= 1.)
            & (ws <= width[..., None]))
    first = tf.argmax(tf.cast(fits, tf.int32), axis=-1)
    h_try = tf.gather(hs, first, batch_dims=len(hs.shape) - 1)
    w_try = tf.gather(ws, first, batch_dims=len(ws.shape) - 1)
    # Fallback: the largest centred crop with the aspect ratio in range.
    ratio = width / height
    h_fb = tf.where(ratio > math.exp(r1), height,
                    tf.minimum(height, tf.round(width / math.exp(r0))))
    w_fb = tf.where(ratio < math.exp(r0), width,
                    tf.minimum(width, tf.round(height * math.exp(r1))))
    h_fb, w_fb = tf.maximum(h_fb, 1.), tf.maximum(w_fb, 1.)
    any_fits = tf.reduce_any(fits, axis=-1)
    h = tf.where(any_fits, h_try, h_fb)
    w = tf.where(any_fits, w_try, w_fb)
    # The fallback is centred: offsets u = 0.5.
    uniforms = tf.concat([uniforms[..., :-2], tf.where(
        any_fits[..., None], uniforms[..., -2:], 0.5)], -1)
  y = tf.minimum(tf.floor(uniforms[..., -2] * (height - h + 1.)), height - h)
  x = tf.minimum(tf.floor(uniforms[..., -1] * (width - w + 1.)), width - w)
  return tf.cast(tf.stack([y, x, h, w], -1), tf.int32)


def center_window(image_hw: tf.Tensor, fraction: float) -> tf.Tensor:
  """Eval window (y, x, s, s) int32 [4]: s = int(fraction * short side)."""
  hw = tf.cast(image_hw, tf.int32)
  side = tf.maximum(tf.cast(
      fraction * tf.cast(tf.reduce_min(hw), tf.float32), tf.int32), 1)
  return tf.stack([(hw[0] - side + 1) // 2, (hw[1] - side + 1) // 2,
                   side, side])


class _JpegImage:
  """Encoded JPEG: shape without decoding, fused decode + crop."""

  def __init__(self, data: tf.Tensor):
    self._data = data

  def hw(self) -> tf.Tensor:
    return tf.image.extract_jpeg_shape(self._data)[:2]

  def crop(self, window: tf.Tensor) -> tf.Tensor:
    return tf.image.decode_and_crop_jpeg(self._data, window, channels=3)


class _DecodedImage:
  """Decoded uint8 [H, W, C] (C in 1, 3, 4), made RGB."""

  def __init__(self, image: tf.Tensor):
    channels = image.shape[-1]
    if channels == 1:
      image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
      image = image[..., :3]
    elif channels != 3:
      raise ValueError(f'Images need 1, 3 or 4 channels, got shape '
                       f'{image.shape}.')
    self._image = image

  def hw(self) -> tf.Tensor:
    return tf.shape(self._image)[:2]

  def crop(self, window: tf.Tensor) -> tf.Tensor:
    return tf.slice(self._image, tf.concat([window[:2], [0]], 0),
                    tf.concat([window[2:], [3]], 0))


def _resize(crop: tf.Tensor, size: int) -> tf.Tensor:
  """Bicubic (no antialias, spec 5.6), then round and clip to uint8."""
  image = tf.image.resize(crop, [size, size], method='bicubic')
  image = tf.cast(tf.clip_by_value(tf.round(image), 0., 255.), tf.uint8)
  return tf.ensure_shape(image, [size, size, 3])


def _preprocess_fn(mode: str, cfg: ml_collections.ConfigDict,
                   image_format: str):
  """(key int64 [2], example) -> output dict for `mode`, seeded statelessly.

  image_format as in _Source: a per-image branch (tf.cond, costly per
  element) is only built for 'any'.
  """
  size = cfg.image_size

  def random_crop(image, uniforms):
    return _resize(image.crop(crop_window(image.hw(), uniforms, cfg)), size)

  def outputs(image, key):
    if mode == 'pretrain':  # two independent crops of the same image
      u = tf.random.stateless_uniform([2, _CROP_UNIFORMS], seed=key)
      return {'view1': random_crop(image, u[0]),
              'view2': random_crop(image, u[1])}
    if mode == 'linear_train':  # one crop + host-side flip (spec 5.4)
      u = tf.random.stateless_uniform([_CROP_UNIFORMS + 1], seed=key)
      crop = random_crop(image, u[:-1])  # select: cheaper than a cond
      return {'images': tf.where(u[-1] < 0.5, tf.reverse(crop, [1]), crop)}
    window = center_window(image.hw(), _get(cfg, 'eval_crop_fraction'))
    return {'images': _resize(image.crop(window), size)}

  def fn(key, example):
    image = example['image']
    if image_format == 'jpeg':
      out = outputs(_JpegImage(image), key)
    elif image_format == 'any':
      def decoded():
        pixels = tf.io.decode_image(image, channels=3,
                                    expand_animations=False)
        return outputs(_DecodedImage(tf.ensure_shape(pixels, [None, None, 3])),
                       key)
      out = tf.cond(tf.io.is_jpeg(image),
                    lambda: outputs(_JpegImage(image), key), decoded)
    else:
      out = outputs(_DecodedImage(image), key)
    out['labels'] = example['label']
    return out

  # No tensor-dependent Python control flow in these tf.data functions, so
  # AutoGraph is skipped: it would only add tracing time and warnings.
  return tf.autograph.experimental.do_not_convert(fn)


def _to_devices(layout: HostLayout):
  """[per_host, ...] -> [local_devices, per_device, ...] (spec 5.3 step 6)."""
  def fn(batch):
    return {k: tf.reshape(v, [layout.local_devices, layout.per_device_batch]
                          + v.shape[1:].as_list()) for k, v in batch.items()}
  return tf.autograph.experimental.do_not_convert(fn)


# --------------------------------------------------------------- training ---

def _stream_keys(seed: int, process_index: int, mode: str) -> list[int]:
  """Three int63 keys (files, buffer, examples) for one host's stream."""
  seq = np.random.SeedSequence([seed % 2**64, process_index,
                                _MODES.index(mode)])
  return [int(s) >> 1 for s in seq.generate_state(3, np.uint64)]


def _epoch_key(key: int, epoch: tf.Tensor, as_seed: bool = False):
  """A per-epoch int64 scalar (or [2] seed) derived statelessly from key."""
  seed = tf.stack([tf.constant(key, tf.int64), epoch])
  if as_seed:
    return seed
  return tf.random.stateless_uniform([], seed=seed, minval=None, maxval=None,
                                     dtype=tf.int64)


def _train_batches(cfg: ml_collections.ConfigDict, *, mode: str, split: str,
                   global_batch_size: int, seed: int, start_step: int,
                   process_index: int | None, process_count: int | None,
                   local_device_count: int | None) -> Iterator[Batch]:
  """Infinite stream of epochs; each epoch drops its (reshuffled) remainder.

  Epoch e of host p: files in an order seeded by (seed, p, e), a shuffle
  buffer seeded likewise, the first steps_per_epoch * per_host_batch examples;
  example i of epoch e gets the stateless crop seed (key(seed, p, e), i). So
  any start_step is reached by starting at its epoch and skipping the
  undecoded records before it, and the stream equals a fresh one's.
  All checks run before the first batch is asked for.
  """
  layout = host_layout(global_batch_size, process_index=process_index,
                       process_count=process_count,
                       local_device_count=local_device_count)
  _check_sampler(cfg)
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  source = _source(cfg)
  ranges = _shard(source.resolve(split), layout.process_index,
                  layout.process_count)
  shard_size = _num(ranges)
  per_host = layout.per_host_batch
  steps_per_epoch = shard_size // per_host
  if steps_per_epoch == 0:
    raise ValueError(
        f'Split {split!r} of {source.name!r} gives process '
        f'{layout.process_index} of {layout.process_count} only {shard_size} '
        f'examples, fewer than its batch of {per_host} (global batch '
        f'{global_batch_size}). Use a smaller batch or a larger split.')
  read = source.reader(ranges)
  preprocess = _preprocess_fn(mode, cfg, source.image_format)
  buffer_size = max(1, min(int(_get(cfg, 'shuffle_buffer')), shard_size))
  file_key, buffer_key, example_key = _stream_keys(
      seed, layout.process_index, mode)
  first_epoch, skip_batches = divmod(start_step, steps_per_epoch)

  @tf.autograph.experimental.do_not_convert
  def epoch(e):
    ds = read(_epoch_key(file_key, e, as_seed=True))
    ds = ds.shuffle(buffer_size, seed=_epoch_key(buffer_key, e))
    ds = ds.take(steps_per_epoch * per_host).enumerate()
    key = _epoch_key(example_key, e)
    return ds.map(_no_autograph(lambda i, ex: (tf.stack([key, i]), ex)))

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
  ds = ds.skip(skip_batches * per_host)  # records, not yet decoded
  ds = ds.map(preprocess, num_parallel_calls=int(_get(cfg,
                                                      'num_parallel_calls')))
  ds = ds.batch(per_host, drop_remainder=True).map(_to_devices(layout))
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_read_options())
  return iter(tfds.as_numpy(ds))


def pretrain_batches(data_config: ml_collections.ConfigDict, *,
                     global_batch_size: int, seed: int, start_step: int = 0,
                     process_index: int | None = None,
                     process_count: int | None = None,
                     local_device_count: int | None = None
                     ) -> Iterator[Batch]:
  """Infinite pretraining batches from `data_config.train_split`.

  Yields {'view1', 'view2': uint8 [local_devices, per_device_batch, S, S, 3],
  'labels': int32 [local_devices, per_device_batch]}: two independent random
  crops of each image. `start_step` batches already consumed are skipped so
  the stream continues exactly where a previous run left it.
  """
  return _train_batches(
      data_config, mode='pretrain', split=data_config.train_split,
      global_batch_size=global_batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count,
      local_device_count=local_device_count)


def linear_train_batches(data_config: ml_collections.ConfigDict, *, split: str,
                         global_batch_size: int, seed: int,
                         start_step: int = 0,
                         process_index: int | None = None,
                         process_count: int | None = None,
                         local_device_count: int | None = None
                         ) -> Iterator[Batch]:
  """Infinite linear-eval training batches: one random crop + random flip.

  Yields {'images': uint8 [local_devices, per_device_batch, S, S, 3],
  'labels': int32 [local_devices, per_device_batch]}.
  """
  return _train_batches(
      data_config, mode='linear_train', split=split,
      global_batch_size=global_batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count,
      local_device_count=local_device_count)


# ------------------------------------------------------------- evaluation ---

def eval_batches(data_config: ml_collections.ConfigDict, *, split: str,
                 global_batch_size: int, process_index: int | None = None,
                 process_count: int | None = None,
                 local_device_count: int | None = None) -> Iterator[Batch]:
  """One pass over `split`: centre crops, every example exactly once.

  Yields {'images': uint8 [local_devices, per_device_batch, S, S, 3],
  'labels': int32 and 'mask': bool [local_devices, per_device_batch]}. All
  processes yield the same number of batches (so collectives line up); the
  tail is padded with zero images, label 0 and mask False.
  """
  layout = host_layout(global_batch_size, process_index=process_index,
                       process_count=process_count,
                       local_device_count=local_device_count)
  source = _source(data_config)
  ranges = source.resolve(split)
  shard_sizes = [_num(_shard(ranges, p, layout.process_count))
                 for p in range(layout.process_count)]
  mine = _shard(ranges, layout.process_index, layout.process_count)
  num_batches = -(-max(shard_sizes) // layout.per_host_batch)
  num_pad = num_batches * layout.per_host_batch - _num(mine)
  preprocess = _preprocess_fn('eval', data_config, source.image_format)
  size = data_config.image_size

  @_no_autograph
  def with_mask(example):
    out = preprocess(tf.zeros([2], tf.int64), example)
    out['mask'] = tf.constant(True)
    return out

  padding = tf.data.Dataset.from_tensors({
      'images': tf.zeros([size, size, 3], tf.uint8),
      'labels': tf.constant(0, tf.int32),
      'mask': tf.constant(False)}).repeat(num_pad)
  if mine:
    ds = source.reader(mine)(None).map(
        with_mask, num_parallel_calls=int(_get(data_config,
                                               'num_parallel_calls')))
    ds = ds.concatenate(padding)
  else:
    ds = padding
  ds = ds.batch(layout.per_host_batch, drop_remainder=True)
  ds = ds.map(_to_devices(layout)).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(_read_options())
  return iter(tfds.as_numpy(ds))


# --------------------------------------------------------------- devices ---

# Mesh axis name of the device placement: the name `byol_jax.update` gives its
# pmap axis, so pmap finds its inputs already in its own layout.
DEVICE_AXIS = 'i'


def prefetch_to_device(iterator: Iterator[Batch], size: int = 2,
                       devices: Sequence[jax.Device] | None = None, *,
                       sharding: jax.sharding.NamedSharding | None = None
                       ) -> Iterator[dict[str, jax.Array]]:
  """Puts host batches on the local devices, `size` batches ahead.

  Each leaf's leading axis (local devices) is split over `devices` (default
  `jax.local_devices()`) along a 1-D mesh axis DEVICE_AXIS, or as `sharding`
  says, so the arrays feed `jax.pmap` directly (its inputs are sharded along
  that axis) or a jit over that mesh. `device_put` is asynchronous: while the
  step runs on batch t, batches t+1.. are being copied.
  """
  if sharding is None:
    devices = list(jax.local_devices() if devices is None else devices)
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(devices), (DEVICE_AXIS,)),
        jax.sharding.PartitionSpec(DEVICE_AXIS))
  num_devices = sharding.mesh.size

  def put(batch):
    def put_leaf(x):
      if x.shape[:1] != (num_devices,):
        raise ValueError(
            f'Batch leaf of shape {x.shape} does not lead with the '
            f'{num_devices} local devices; build the iterator with '
            f'local_device_count={num_devices}.')
      return jax.device_put(x, sharding)
    return jax.tree.map(put_leaf, batch)

  queue = collections.deque()
  iterator = iter(iterator)

  def enqueue(n: int) -> None:
    for batch in itertools.islice(iterator, n):
      queue.append(put(batch))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)
