"""Tests for byol_jax.input_pipeline on small datasets the tests write.

Most tests read a prepared folder whose images are constant-valued PNGs: every
crop of image k is filled with k, so a batch tells exactly which examples it
holds.
"""

import os

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from byol_jax import input_pipeline as ip
from byol_jax import prepare_folder

NUM_TRAIN, NUM_TEST, CLASSES = 37, 11, ('ant', 'bee', 'cow')


def _write(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  encode = tf.io.encode_jpeg if path.endswith('.jpg') else tf.io.encode_png
  with open(path, 'wb') as f:
    f.write(encode(image).numpy())


@pytest.fixture(scope='module')
def ids_dir(tmp_path_factory):
  """TFDS dataset 'ids_ds': image of id k (1..48) is filled with k."""
  root = tmp_path_factory.mktemp('ids')
  k = 0
  for split, n in (('train', NUM_TRAIN), ('test', NUM_TEST)):
    for i in range(n):
      k += 1
      shape = (6 + i % 4, 5 + i % 3, 3)  # mixed sizes
      _write(f'{root}/src/{split}/{CLASSES[k % 3]}/{k:03d}.png',
             np.full(shape, k, np.uint8))
  prepare_folder.prepare(str(root / 'src'), 'ids_ds', str(root / 'tfds'))
  return str(root / 'tfds')


def _cfg(data_dir, **kw):
  cfg = dict(dataset='ids_ds', data_dir=data_dir, train_split='train',
             image_size=4, shuffle_buffer=64)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def _ids(images, mask=None):
  """Ids of the examples in a [devices, batch, S, S, 3] constant-image array."""
  ids = images[..., 0, 0, 0].reshape(-1).astype(int)
  return ids if mask is None else ids[mask.reshape(-1)]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_shapes_and_dtypes_of_every_mode(ids_dir):
  cfg = _cfg(ids_dir)
  hosts = dict(process_index=0, process_count=1, local_device_count=2)
  pre = next(ip.pretrain_batches(cfg, global_batch_size=6, seed=0, **hosts))
  lin = next(ip.linear_train_batches(cfg, split='train', global_batch_size=6,
                                     seed=0, **hosts))
  ev = next(ip.eval_batches(cfg, split='test', global_batch_size=6, **hosts))
  image, label = ((2, 3, 4, 4, 3), np.uint8), ((2, 3), np.int32)
  assert {k: (v.shape, v.dtype) for k, v in pre.items()} == {
      'view1': image, 'view2': image, 'labels': label}
  assert {k: (v.shape, v.dtype) for k, v in lin.items()} == {
      'images': image, 'labels': label}
  assert {k: (v.shape, v.dtype) for k, v in ev.items()} == {
      'images': image, 'labels': label, 'mask': ((2, 3), np.bool_)}
  # Both views are crops of the same image; the label is that image's class.
  np.testing.assert_array_equal(_ids(pre['view1']), _ids(pre['view2']))
  np.testing.assert_array_equal(pre['labels'].reshape(-1),
                                _ids(pre['view1']) % 3)
  assert ip.num_examples(cfg, 'train[:30]+test') == 30 + NUM_TEST
  assert ip.num_classes(cfg) == 3


def test_two_processes_read_disjoint_shards_covering_the_split(ids_dir):
  seen = []
  for p in range(2):
    it = ip.pretrain_batches(_cfg(ids_dir), global_batch_size=8, seed=3,
                             process_index=p, process_count=2,
                             local_device_count=2)
    # 4 batches of 4 per epoch (shards of 19 and 18); 6 epochs.
    epochs = [np.concatenate([_ids(b['view1']) for b in _take(it, 4)])
              for _ in range(6)]
    for ids in epochs:
      assert len(set(ids)) == len(ids) == 16  # no repeat within an epoch
    seen.append(set(np.concatenate(epochs)))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(1, NUM_TRAIN + 1))


def test_eval_sees_every_example_once_with_padding_masks(ids_dir):
  # 37 examples, global batch 8 over 2 processes x 2 devices.
  per_process = [list(ip.eval_batches(_cfg(ids_dir), split='train',
                                      global_batch_size=8, process_index=p,
                                      process_count=2, local_device_count=2))
                 for p in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == 5  # ceil(19 / 4)
  ids, labels = [], []
  for batches in per_process:
    for b in batches:
      ids.extend(_ids(b['images'], b['mask']))
      labels.extend(b['labels'][b['mask']])
      assert not b['images'][~b['mask']].any()  # padding is zeros
      assert not b['labels'][~b['mask']].any()
  assert sorted(ids) == list(range(1, NUM_TRAIN + 1))
  np.testing.assert_array_equal(labels, np.array(ids) % 3)


def _hosts(local=1):
  return dict(process_index=0, process_count=1, local_device_count=local)


def test_scattered_subset_reads_exactly_its_examples(ids_dir, monkeypatch):
  """A label subset is thousands of one-example slices: no recursion limit, and
  the filtered single-pass reader yields exactly the chosen examples."""
  cfg = _cfg(ids_dir)
  assert ip.num_examples(cfg, '+'.join(['train[3:4]'] * 3000)) == 3000
  everything = np.concatenate([
      _ids(b['images'], b['mask'])
      for b in ip.eval_batches(cfg, split='train', global_batch_size=8)])
  positions = [0, 2, 3, 7, 20, 21, 36]
  split = '+'.join(f'train[{p}:{p + 1}]' for p in positions)
  monkeypatch.setattr(ip, '_MAX_READ_RANGES', 2)  # take the sparse path
  subset = np.concatenate([
      _ids(b['images'], b['mask'])
      for b in ip.eval_batches(cfg, split=split, global_batch_size=4, **_hosts(2))])
  np.testing.assert_array_equal(subset, everything[positions])
  batches = ip.linear_train_batches(cfg, split=split, global_batch_size=7, seed=0,
                                    **_hosts(1))
  for _ in range(2):  # every epoch is the subset, once each
    assert sorted(_ids(next(batches)['images'])) == sorted(everything[positions])


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for x, y in zip(batches_a, batches_b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_each_epoch_is_reshuffled(ids_dir):
  it = ip.linear_train_batches(_cfg(ids_dir), split='train',
                               global_batch_size=9, seed=0, **_hosts())
  # 37 // 9 = 4 batches per epoch.
  epoch0 = np.concatenate([_ids(b['images']) for b in _take(it, 4)])
  epoch1 = np.concatenate([_ids(b['images']) for b in _take(it, 4)])
  assert len(set(epoch0)) == len(set(epoch1)) == 36
  assert not np.array_equal(epoch0, epoch1)


# ---------------------------------------------------------------- demo ---

def _gradient_images(n, height, width):
  """Image i: pixel (r, c) = (i, r, c) in channels, distinct everywhere."""
  r, c = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  images = np.zeros((n, height, width, 3), np.uint8)
  images[..., 0] = np.arange(n)[:, None, None]
  images[..., 1] = r * 7
  images[..., 2] = c * 5
  return images


@pytest.fixture
def fake_demo(monkeypatch):
  calls = []

  def make(num, seed, image_size=32):
    calls.append((num, seed, image_size))
    images = _gradient_images(num, image_size, image_size - 2)
    return images, (np.arange(num) % 10).astype(np.int32)

  monkeypatch.setattr(ip, '_demo_generator',
                      lambda: (make, tuple(f'c{i}' for i in range(10))))
  return calls


def _demo_cfg(**kw):
  cfg = dict(dataset='demo', train_split='train[:20]', image_size=8,
             demo_train_examples=40, demo_test_examples=12,
             demo_image_size=12, shuffle_buffer=100)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


@pytest.fixture(params=['tfds', 'demo'])
def any_cfg(request, ids_dir, fake_demo):
  """The prepared TFDS folder, or the in-memory demo of gradient images."""
  del fake_demo
  if request.param == 'tfds':
    return _cfg(ids_dir, image_size=3)
  return _demo_cfg(image_size=3)


def test_same_seed_same_batches_other_seed_other_batches(any_cfg):
  def run(seed):
    return _take(ip.pretrain_batches(any_cfg, global_batch_size=4, seed=seed,
                                     **_hosts()), 3)

  a = run(0)
  _assert_same(a, run(0))
  other = run(1)
  assert any(not np.array_equal(x['view1'], y['view1'])
             for x, y in zip(a, other))


@pytest.mark.parametrize('start_step', [2, 5])
def test_resume_continues_the_same_stream(any_cfg, start_step):
  # Epochs of 2 batches (shards of 20 and 37 examples, batch 8 and 16): the
  # resumed stream crosses epoch boundaries too.
  kw = dict(global_batch_size=16 if any_cfg.dataset != 'demo' else 8, seed=7,
            **_hosts(2))
  fresh = _take(ip.pretrain_batches(any_cfg, **kw), 8)
  resumed = _take(ip.pretrain_batches(any_cfg, start_step=start_step, **kw),
                  8 - start_step)
  _assert_same(fresh[start_step:], resumed)


def test_demo_dataset_splits_and_modes(fake_demo):
  cfg = _demo_cfg()
  assert ip.num_examples(cfg, 'train[:20]') == 20
  assert ip.num_examples(cfg, 'train[30:]+test') == 10 + 12
  assert ip.num_classes(cfg) == 10
  assert (40, 0, 12) in fake_demo and (12, 1, 12) in fake_demo
  pre = next(ip.pretrain_batches(cfg, global_batch_size=4, seed=0,
                                 local_device_count=2, process_count=1,
                                 process_index=0))
  assert pre['view1'].shape == (2, 2, 8, 8, 3)
  assert set(pre['view1'][..., 0, 0, 0].ravel()) <= set(range(20))
  ev = list(ip.eval_batches(cfg, split='test', global_batch_size=5,
                            local_device_count=1, process_count=1,
                            process_index=0))
  assert sum(b['mask'].sum() for b in ev) == 12


def test_eval_centre_crop_follows_the_spec(fake_demo):
  del fake_demo
  # 12 x 10 images, fraction 0.875: side int(8.75) = 8, offsets
  # ((12 - 8 + 1) // 2, (10 - 8 + 1) // 2) = (2, 1); S = 8 is an exact copy.
  cfg = _demo_cfg(eval_crop_fraction=0.875)
  batch = next(ip.eval_batches(cfg, split='test[:2]', global_batch_size=2,
                               local_device_count=1, process_count=1,
                               process_index=0))
  expected = _gradient_images(12, 12, 10)[:2, 2:10, 1:9]
  np.testing.assert_array_equal(batch['images'][0], expected)


def test_linear_train_flips_some_full_crops(fake_demo):
  del fake_demo
  # Area and ratio pinned so the crop is the whole (square) image.
  cfg = _demo_cfg(image_size=12, demo_image_size=14, crop_area_range=(1., 1.),
                  crop_aspect_range=(12 / 14, 12 / 14))
  batch = next(ip.linear_train_batches(cfg, split='train', global_batch_size=32,
                                       seed=0, local_device_count=1,
                                       process_count=1, process_index=0))
  flipped = []
  originals = _gradient_images(40, 14, 12)
  for image in batch['images'][0]:
    # The crop is the whole 14 x 12 image resized to 12 x 12, maybe flipped.
    resized = ip._resize(tf.constant(originals[image[0, 0, 0]]), 12).numpy()
    if np.array_equal(image, resized):
      flipped.append(False)
    else:
      np.testing.assert_array_equal(image, resized[:, ::-1])
      flipped.append(True)
  assert 0 < sum(flipped) < len(flipped)


def test_real_demo_data_if_available():
  demo_data = pytest.importorskip('byol_jax.demo_data')
  cfg = _demo_cfg(image_size=16, demo_train_examples=64,
                  demo_test_examples=16, demo_image_size=32)
  batch = next(ip.pretrain_batches(cfg, global_batch_size=8, seed=0,
                                   local_device_count=1, process_count=1,
                                   process_index=0))
  assert batch['view1'].shape == (1, 8, 16, 16, 3)
  assert ip.num_classes(cfg) == len(demo_data.DEMO_CLASS_NAMES)


# --------------------------------------------------- JPEG, gray, RGBA ---

@pytest.fixture(scope='module')
def images_dir(tmp_path_factory):
  """Two datasets: 'jpeg_ds' (colour and gray JPEGs, so declared JPEG: fused
  decode and crop, no per-image branch) and 'mixed_ds' (the same plus an RGBA
  PNG: formats sniffed per image). Colour JPEG is 4:4:4, so fused crops equal
  decoded-then-cropped pixels exactly."""
  root = tmp_path_factory.mktemp('images')
  rng = np.random.default_rng(0)
  colour = rng.integers(0, 255, (20, 16, 3), np.uint8)
  files = {
      'a/0.jpg': tf.io.encode_jpeg(colour, quality=95,
                                   chroma_downsampling=False).numpy(),
      'a/1.jpg': tf.io.encode_jpeg(
          rng.integers(0, 255, (12, 18, 1), np.uint8)).numpy(),
      'b/2.png': tf.io.encode_png(
          rng.integers(0, 255, (9, 9, 4), np.uint8)).numpy(),
  }
  for name, kept in (('jpeg_ds', ('a/0.jpg', 'a/1.jpg')),
                     ('mixed_ds', tuple(files))):
    for f in kept:
      path = root / name / 'test' / f
      os.makedirs(path.parent, exist_ok=True)
      path.write_bytes(files[f])
    prepare_folder.prepare(str(root / name), name, str(root / 'tfds'))
  return str(root / 'tfds'), files


@pytest.mark.parametrize('name', ['jpeg_ds', 'mixed_ds'])
def test_jpeg_grayscale_and_rgba_images_come_out_rgb(images_dir, name):
  data_dir, files = images_dir
  builder = tfds.builder(name, data_dir=data_dir)
  assert builder.info.features['image'].encoding_format == (
      'jpeg' if name == 'jpeg_ds' else 'png')
  order = [ex['file_name'].decode() for ex in tfds.as_numpy(
      builder.as_dataset('test', decoders={
          'image': tfds.decode.SkipDecoding()}))]

  def decoded(f):
    return tf.io.decode_image(files[f]).numpy()

  # Centre crops of the whole short side (fraction 1), resized to their own
  # size (an exact copy): colour 20x16 -> rows 2:18; gray 12x18 -> cols 3:15.
  expected = {'a/0.jpg': (16, decoded('a/0.jpg')[2:18]),
              'a/1.jpg': (12, np.repeat(decoded('a/1.jpg')[:, 3:15], 3, -1)),
              'b/2.png': (9, decoded('b/2.png')[..., :3])}
  for f in order:
    size, pixels = expected[f]
    cfg = ml_collections.ConfigDict(dict(
        dataset=name, data_dir=data_dir, image_size=size,
        eval_crop_fraction=1.0))
    batch = next(ip.eval_batches(cfg, split='test', global_batch_size=3,
                                 **_hosts()))
    np.testing.assert_array_equal(batch['images'][0, order.index(f)], pixels)
  cfg = ml_collections.ConfigDict(dict(dataset=name, data_dir=data_dir,
                                       train_split='test', image_size=8,
                                       shuffle_buffer=4))
  batch = next(ip.pretrain_batches(cfg, global_batch_size=2, seed=0,
                                   **_hosts()))
  assert batch['view1'].shape == (1, 2, 8, 8, 3)


# ------------------------------------------------------------ crops ---

def _windows(hw, n, **kw):
  cfg = ml_collections.ConfigDict(kw)
  u = tf.random.stateless_uniform([n, ip._CROP_UNIFORMS], seed=[1, 2])
  return ip.crop_window(tf.constant(hw), u, cfg).numpy()


def test_official_crop_sampler_statistics():
  height, width = 400, 350
  y, x, h, w = _windows([height, width], 20000, crop_sampler='official').T
  assert (h >= 1).all() and (w >= 1).all()
  assert (y >= 0).all() and (x >= 0).all()
  assert (y + h <= height).all() and (x + w <= width).all()
  clamped = (h == height) | (w == width)
  assert 0.02 < clamped.mean() < 0.5  # single attempt: clamping happens
  area = h * w / (height * width)
  ratio = w / h
  free = ~clamped
  # Rounding each side moves the area by < 1 pixel row/column.
  tol = (h + w + 1) / (height * width)
  assert (area[free] >= 0.08 - tol[free]).all()
  assert (area[free] <= 1.0 + tol[free]).all()
  assert (ratio[free] >= 3 / 4 * (1 - 2 / np.minimum(h, w)[free])).all()
  assert (ratio[free] <= 4 / 3 * (1 + 2 / np.minimum(h, w)[free])).all()
  # Area ~ U(0.08, 1) and log ratio ~ U(log 3/4, log 4/3) before clamping;
  # small crops are never clamped, so their statistics show it directly.
  small = area < 0.5
  assert abs(np.mean(area[small]) - (0.08 + 0.5) / 2) < 0.01
  assert abs(np.mean(np.log(ratio[small]))) < 0.01
  assert np.log(ratio[small]).max() > 0.9 * np.log(4 / 3)
  assert np.log(ratio[small]).min() < 0.9 * np.log(3 / 4)
  # Offsets are uniform over the free range.
  assert abs(np.mean(y / np.maximum(height - h, 1)) - 0.5) < 0.02


def test_inception_sampler_fits_or_falls_back_to_centre():
  y, x, h, w = _windows([400, 350], 5000, crop_sampler='inception').T
  ratio = w / h
  assert (y + h <= 400).all() and (x + w <= 350).all()
  assert (ratio >= 0.74).all() and (ratio <= 1.35).all()  # never distorted
  # A 1000 x 10 strip: no attempt fits, so a centred crop of ratio 3/4.
  y, x, h, w = _windows([1000, 10], 50, crop_sampler='inception').T
  assert (w == 10).all() and (h == 13).all()
  assert (y == (1000 - 13 + 1) // 2).all() and (x == 0).all()  # as eval


def test_tiny_images_still_crop():
  y, x, h, w = _windows([1, 2], 100, crop_sampler='official').T
  assert (h == 1).all() and (w >= 1).all() and (x + w <= 2).all()


# -------------------------------------------------------- bad input ---

def _expect_error(kind, match, fn):
  with pytest.raises(kind, match=match) as info:
    fn()
  return str(info.value)


def test_unknown_dataset_says_how_to_prepare(tmp_path):
  cfg = ml_collections.ConfigDict(dict(dataset='no_such_images',
                                       data_dir=str(tmp_path), image_size=8))
  message = _expect_error(ip.DatasetNotFoundError, 'no_such_images',
                          lambda: ip.num_examples(cfg, 'train'))
  assert 'python -m byol_jax.prepare_folder' in message


def test_missing_data_dir(tmp_path):
  cfg = ml_collections.ConfigDict(dict(dataset='cifar10',
                                       data_dir=str(tmp_path / 'nope'),
                                       image_size=8))
  message = _expect_error(ip.DatasetNotFoundError, 'does not exist',
                          lambda: ip.num_classes(cfg))
  assert str(tmp_path / 'nope') in message and 'data_dir' in message


def test_unprepared_tfds_dataset_never_downloads(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError('the pipeline must not download by default')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      no_network)
  cfg = ml_collections.ConfigDict(dict(dataset='cifar10',
                                       data_dir=str(tmp_path), image_size=8))
  message = _expect_error(ip.DatasetNotFoundError, 'not prepared',
                          lambda: ip.num_classes(cfg))
  assert 'tfds build cifar10' in message and 'data.data_dir' in message
  cfg.dataset = 'imagenet2012'
  message = _expect_error(ip.DatasetNotFoundError, 'manual download',
                          lambda: ip.num_classes(cfg))
  assert 'downloads/manual' in message


def test_failed_download_says_so(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise ConnectionError('no route to host')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      offline)
  cfg = ml_collections.ConfigDict(dict(dataset='cifar100', download=True,
                                       data_dir=str(tmp_path), image_size=8))
  message = _expect_error(ip.DatasetNotFoundError, 'download .* failed',
                          lambda: ip.num_classes(cfg))
  assert 'no route to host' in message and 'data.data_dir' in message


def test_batch_not_divisible_by_devices(ids_dir):
  message = _expect_error(
      ValueError, 'does not divide',
      lambda: ip.pretrain_batches(_cfg(ids_dir), global_batch_size=10,
                                  seed=0, process_index=0, process_count=2,
                                  local_device_count=4))
  assert '10' in message and '8 devices' in message and 'multiple of 8' in message


def test_other_bad_configs(ids_dir):
  hosts = dict(process_index=0, process_count=1, local_device_count=1)
  _expect_error(ValueError, 'crop_sampler', lambda: ip.pretrain_batches(
      _cfg(ids_dir, crop_sampler='torch'), global_batch_size=4, seed=0,
      **hosts))
  _expect_error(ValueError, "Bad split 'validation'", lambda: ip.eval_batches(
      _cfg(ids_dir), split='validation', global_batch_size=4, **hosts))
  _expect_error(ValueError, 'fewer than its batch', lambda: ip.pretrain_batches(
      _cfg(ids_dir, train_split='train[:3]'), global_batch_size=4, seed=0,
      **hosts))


# ---------------------------------------------------------- devices ---

def test_prefetch_to_device_feeds_pmap(ids_dir):
  devices = jax.local_devices()
  n = len(devices)
  batches = ip.eval_batches(_cfg(ids_dir), split='train',
                            global_batch_size=2 * n, process_index=0,
                            process_count=1, local_device_count=n)
  host = list(ip.eval_batches(_cfg(ids_dir), split='train',
                              global_batch_size=2 * n, process_index=0,
                              process_count=1, local_device_count=n))
  on_device = list(ip.prefetch_to_device(batches, size=2))
  assert len(on_device) == len(host)
  count = jax.pmap(lambda m: m.sum())
  for h, d in zip(host, on_device):
    assert isinstance(d['images'], jax.Array)
    assert d['images'].sharding.device_set == set(devices)
    np.testing.assert_array_equal(np.asarray(d['images']), h['images'])
    np.testing.assert_array_equal(np.asarray(count(d['mask'])),
                                  h['mask'].sum(axis=1))
  with pytest.raises(ValueError, match='local devices'):
    next(ip.prefetch_to_device(iter([{'x': np.zeros((n + 1, 2))}])))
