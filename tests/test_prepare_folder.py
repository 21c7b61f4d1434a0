"""Tests for byol_jax.prepare_folder: small folders the tests write, and the
shared CIFAR-10 archive when it is present."""

import pathlib
import struct
import subprocess
import sys
import tarfile
import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from byol_jax import input_pipeline
from byol_jax import prepare_folder

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / 'shared' / 'data' / 'cifar10' / 'train.tar.gz'
CIFAR_CLASSES = ('airplane automobile bird cat deer dog frog horse ship '
                 'truck').split()


def _bmp(image):
  """A 24-bit BMP (a format TF decodes but that is neither JPEG nor PNG)."""
  height, width, _ = image.shape
  row = (3 * width + 3) // 4 * 4
  pixels = b''.join(image[r, :, ::-1].tobytes().ljust(row, b'\0')
                    for r in range(height - 1, -1, -1))
  header = struct.pack('<2sIHHI', b'BM', 54 + len(pixels), 0, 0, 54)
  info = struct.pack('<IiiHHIIiiII', 40, width, height, 1, 24, 0, len(pixels),
                     2835, 2835, 0, 0)
  return header + info + pixels


def _source_files():
  """{relative path: bytes}: mixed sizes, grayscale, RGBA, BMP, empty class."""
  rng = np.random.default_rng(0)

  def pixels(h, w, c=3):
    return rng.integers(0, 256, (h, w, c), np.uint8)

  return {
      'train/cat/a.jpg': tf.io.encode_jpeg(pixels(10, 14)).numpy(),
      'train/cat/b.jpg': tf.io.encode_jpeg(pixels(31, 7)).numpy(),
      'train/cat/gray.jpg': tf.io.encode_jpeg(pixels(9, 9, 1)).numpy(),
      'train/dog/rgba.png': tf.io.encode_png(pixels(8, 5, 4)).numpy(),
      'train/dog/gray.png': tf.io.encode_png(pixels(6, 11, 1)).numpy(),
      'train/dog/c.bmp': _bmp(pixels(5, 6)),
      'test/cat/d.jpg': tf.io.encode_jpeg(pixels(12, 12)).numpy(),
      'test/dog/e.png': tf.io.encode_png(pixels(4, 4)).numpy(),
      'train/.DS_Store': b'finder junk',
  }


def _write_folder(root, files, empty_dirs=('train/empty',)):
  for rel, data in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  for d in empty_dirs:
    (root / d).mkdir(parents=True, exist_ok=True)
  return root


def _stored(name, data_dir, split):
  """{file_name: (stored image bytes, label)} read back through TFDS."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  ds = builder.as_dataset(split=split,
                          decoders={'image': tfds.decode.SkipDecoding()})
  return {ex['file_name'].decode(): (ex['image'], int(ex['label']))
          for ex in tfds.as_numpy(ds)}


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  """The small folder, prepared through the command line."""
  root = tmp_path_factory.mktemp('small')
  files = _source_files()
  _write_folder(root / 'src', files)
  result = subprocess.run(
      [sys.executable, '-m', 'byol_jax.prepare_folder',
       f'--source={root / "src"}', '--name=small_ds',
       f'--data_dir={root / "tfds"}'],
      cwd=REPO, capture_output=True, text=True, check=True)
  return root, files, result.stdout + result.stderr


def test_cli_prints_splits_classes_and_counts(small):
  _, _, output = small
  assert 'classes (3): cat dog empty' in output
  assert 'split train: 6 examples' in output
  assert 'cat=3, dog=3, empty=0' in output
  assert 'split test: 2 examples' in output
  assert "class 'empty' has no images in split 'train'" in output


def test_round_trip_of_labels_and_pixels(small):
  root, files, _ = small
  builder = tfds.builder('small_ds', data_dir=str(root / 'tfds'))
  assert builder.info.features['label'].names == ['cat', 'dog', 'empty']
  assert builder.info.features['image'].encoding_format == 'png'  # mixed
  for split in ('train', 'test'):
    stored = _stored('small_ds', root / 'tfds', split)
    expected = {k.split('/', 1)[1]: v for k, v in files.items()
                if k.startswith(split + '/') and '.DS_Store' not in k}
    assert set(stored) == set(expected)
    for rel, (data, label) in stored.items():
      assert label == ['cat', 'dog', 'empty'].index(rel.split('/')[0])
      source = expected[rel]
      if rel.endswith(('.jpg', '.png')):
        assert data == source  # original bytes, no re-encode
      else:
        assert data.startswith(b'\x89PNG')  # BMP stored as PNG
      np.testing.assert_array_equal(
          tf.io.decode_image(data, channels=3).numpy(),
          tf.io.decode_image(source, channels=3).numpy())
  # TFDS's own decoding gives RGB for the grayscale and RGBA files too.
  for ex in tfds.as_numpy(builder.as_dataset(split='train')):
    assert ex['image'].ndim == 3 and ex['image'].shape[-1] == 3


def test_rerun_is_a_no_op(small):
  root, _, _ = small
  version_dir = root / 'tfds' / 'small_ds' / prepare_folder.VERSION
  before = {p: p.stat().st_mtime_ns for p in version_dir.iterdir()}
  info = prepare_folder.prepare(str(root / 'src'), 'small_ds',
                                str(root / 'tfds'))
  assert info.already_prepared
  assert 'already prepared' in info.summary()
  assert info.counts['train'] == {'cat': 3, 'dog': 3, 'empty': 0}
  assert {p: p.stat().st_mtime_ns for p in version_dir.iterdir()} == before


def test_tar_archive_with_a_wrapping_folder(tmp_path, small):
  root, files, _ = small
  archive = tmp_path / 'images.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(root / 'src', arcname='my_images')
  info = prepare_folder.prepare(str(archive), 'small_tar',
                                str(tmp_path / 'tfds'))
  assert not info.already_prepared and info.ignored == 1
  assert info.class_names == ('cat', 'dog', 'empty')
  assert info.counts == {'test': {'cat': 1, 'dog': 1, 'empty': 0},
                         'train': {'cat': 3, 'dog': 3, 'empty': 0}}
  stored = _stored('small_tar', tmp_path / 'tfds', 'train')
  assert stored['cat/a.jpg'][0] == files['train/cat/a.jpg']


def test_prepared_folder_reads_like_a_tfds_dataset(small):
  root, _, _ = small
  cfg = ml_collections.ConfigDict(dict(
      dataset='small_ds', data_dir=str(root / 'tfds'), train_split='train',
      image_size=8, shuffle_buffer=16))
  assert input_pipeline.num_examples(cfg, 'train+test') == 8
  assert input_pipeline.num_classes(cfg) == 3
  batch = next(input_pipeline.pretrain_batches(
      cfg, global_batch_size=6, seed=0, process_index=0, process_count=1,
      local_device_count=1))
  assert batch['view1'].shape == (1, 6, 8, 8, 3)


def _corrupt_folder(root):
  files = dict(_source_files())
  good = files['train/cat/a.jpg']
  files['train/cat/truncated.jpg'] = good[:len(good) // 3]
  files['train/dog/notes.txt'] = b'not an image at all'
  return _write_folder(root / 'src', files)


def test_corrupt_file_is_named(tmp_path):
  src = _corrupt_folder(tmp_path)
  with pytest.raises(prepare_folder.CorruptImageError) as info:
    prepare_folder.prepare(str(src), 'broken', str(tmp_path / 'tfds'))
  message = str(info.value)
  assert ('truncated.jpg' in message or 'notes.txt' in message)
  assert '--skip_corrupt' in message
  # Nothing half-written is left to be mistaken for a prepared dataset.
  assert not (tmp_path / 'tfds' / 'broken' / prepare_folder.VERSION).exists()


def test_skip_corrupt_warns_and_counts(tmp_path, capsys):
  src = _corrupt_folder(tmp_path)
  info = prepare_folder.prepare(str(src), 'skipped', str(tmp_path / 'tfds'),
                                skip_corrupt=True)
  assert sorted(info.skipped) == ['train/cat/truncated.jpg',
                                  'train/dog/notes.txt']
  assert info.counts['train'] == {'cat': 3, 'dog': 3, 'empty': 0}
  err = capsys.readouterr().err
  assert 'truncated.jpg' in err and 'skipped 2 corrupt file(s)' in err


def test_bad_layout_names_the_file(tmp_path):
  _write_folder(tmp_path / 'src', {'train/cat/a.png': _source_files()[
      'test/dog/e.png'], 'train/loose.png': b'x'}, empty_dirs=())
  with pytest.raises(prepare_folder.LayoutError, match='loose.png'):
    prepare_folder.prepare(str(tmp_path / 'src'), 'loose',
                           str(tmp_path / 'tfds'))


def test_bad_names_and_sources(tmp_path):
  with pytest.raises(ValueError, match='catalogue'):
    prepare_folder.prepare(str(tmp_path), 'cifar10', str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='not a valid TFDS dataset name'):
    prepare_folder.prepare(str(tmp_path), 'My-Images', str(tmp_path / 'tfds'))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    prepare_folder.prepare(str(tmp_path / 'nope'), 'nope',
                           str(tmp_path / 'tfds'))


# ----------------------------------------------------- shared CIFAR-10 ---

@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
  if not CIFAR.exists():
    pytest.skip(f'{CIFAR} is absent (it ships only with the shared data).')
  data_dir = tmp_path_factory.mktemp('cifar')
  start = time.perf_counter()
  info = prepare_folder.prepare(str(CIFAR), 'cifar10_folder', str(data_dir))
  print(f'\nCIFAR-10 archive prepared in {time.perf_counter() - start:.1f} s')
  return info, data_dir


def test_cifar10_archive_round_trip(cifar):
  info, data_dir = cifar
  assert info.class_names == tuple(CIFAR_CLASSES)
  assert info.counts == {'train': {c: 5000 for c in CIFAR_CLASSES}}
  stored = _stored('cifar10_folder', data_dir, 'train[:300]')
  wanted = {f'train/{name}': name for name in stored}
  found = 0
  with tarfile.open(CIFAR, 'r|gz') as tar:
    for member in tar:
      name = member.name.removeprefix('./')
      if name in wanted:
        data, label = stored[wanted[name]]
        source = tar.extractfile(member).read()
        assert data == source
        assert label == CIFAR_CLASSES.index(name.split('/')[1])
        np.testing.assert_array_equal(tf.io.decode_jpeg(data).numpy(),
                                      tf.io.decode_jpeg(source).numpy())
        found += 1
  assert found == 300
  cfg = ml_collections.ConfigDict(dict(dataset='cifar10_folder',
                                       data_dir=str(data_dir), image_size=32))
  assert input_pipeline.num_examples(cfg, 'train[:45000]') == 45000
  assert input_pipeline.num_examples(cfg, 'train[45000:]') == 5000
