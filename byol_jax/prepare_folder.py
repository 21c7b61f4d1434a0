r"""Prepare your own images as an on-disk TFDS dataset, once.

The source is a folder or a `.tar`/`.tar.gz`/`.tgz` archive laid out
`<split>/<class>/<image>` (one optional wrapping folder is stripped). The result
is a regular TFDS dataset written by TFDS's own writer
(`tfds.dataset_builders.store_as_tfds_dataset`), so `tfds.builder(name,
data_dir=data_dir)` and `byol_jax.input_pipeline` read it exactly like a
catalogue dataset. Features:

  image:     tfds.features.Image, (None, None, 3). JPEG sources keep their
             original bytes (no re-encode, so the pipeline can fuse decode and
             crop); PNG sources keep theirs; anything else TF can decode
             (BMP, GIF, ...) is stored as PNG. Grayscale and RGBA files are
             stored as they are and read as RGB (decode with channels=3).
  label:     tfds.features.ClassLabel, names = sorted class folder names
             (the union over splits; a class empty in a split keeps its label).
  file_name: `<class>/<image>` relative to the split folder.

Files whose name starts with '.' and `__MACOSX` folders are ignored (and
counted). A file that is not a decodable image stops preparation with an error
naming it, unless `skip_corrupt` is set: then it is skipped with a warning and
counted. Re-running on an already prepared dataset is a no-op.

Usage:
  python -m byol_jax.prepare_folder --source=<folder or archive> \
      --name=<dataset name> --data_dir=<dir> [--skip_corrupt]
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import sys
import tarfile
from typing import Iterator

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants as tfds_constants
import tqdm

VERSION = '1.0.0'
_NAME_RE = re.compile(r'^[a-z][a-z0-9_]*$')
_ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz')
_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


class CorruptImageError(ValueError):
  """A source file is not a decodable image."""


class LayoutError(ValueError):
  """The source is not laid out `<split>/<class>/<image>`."""


@dataclasses.dataclass(frozen=True)
class PreparedInfo:
  """What was prepared: enough to print a summary and to configure training."""
  name: str
  data_dir: str
  class_names: tuple[str, ...]
  counts: dict[str, dict[str, int]]  # split -> class name -> examples
  skipped: tuple[str, ...] = ()  # corrupt files skipped (skip_corrupt=True)
  ignored: int = 0  # hidden files ignored
  already_prepared: bool = False

  @property
  def num_examples(self) -> dict[str, int]:
    return {s: sum(c.values()) for s, c in self.counts.items()}

  def summary(self) -> str:
    lines = [f"Dataset '{self.name}' in {self.data_dir}"
             + (' (already prepared, nothing done)' if self.already_prepared
                else '')]
    lines.append(f'  classes ({len(self.class_names)}): '
                 + ' '.join(self.class_names))
    for split, per_class in self.counts.items():
      lines.append(f'  split {split}: {sum(per_class.values())} examples')
      lines.append('    ' + ', '.join(f'{c}={n}' for c, n in per_class.items()))
    if self.skipped:
      lines.append(f'  skipped {len(self.skipped)} corrupt file(s)')
    if self.ignored:
      lines.append(f'  ignored {self.ignored} hidden file(s)')
    return '\n'.join(lines)


# ---------------------------------------------------------------- sources ---

def _is_ignored(parts: tuple[str, ...]) -> bool:
  return any(p.startswith('.') or p == '__MACOSX' for p in parts)


def _is_archive(source: str) -> bool:
  return source.lower().endswith(_ARCHIVE_SUFFIXES)


def _list_source(source: str) -> tuple[dict[str, bool], list[str]]:
  """Returns ({file path: starts like a JPEG}, directory paths).

  Paths are posix, relative to the source. The JPEG sniff (first bytes) lets
  the dataset declare its encoding exactly, so readers can trust it.
  """
  files, dirs = {}, []
  progress = tqdm.tqdm(desc=f'Listing {source}', unit=' files',
                       mininterval=2.)
  if _is_archive(source):
    with tarfile.open(source, 'r|*') as tar:
      for member in tar:
        name = member.name.strip('/').removeprefix('./')
        if member.isdir():
          dirs.append(name)
        elif member.isfile():
          head = tar.extractfile(member).read(len(_JPEG_MAGIC))
          files[name] = head == _JPEG_MAGIC
          progress.update()
  else:
    for root, dirnames, filenames in os.walk(source):
      rel = os.path.relpath(root, source)
      rel = '' if rel == '.' else rel.replace(os.sep, '/') + '/'
      dirs.extend(rel + d for d in dirnames)
      for f in filenames:
        with open(os.path.join(root, f), 'rb') as fobj:
          files[rel + f] = fobj.read(len(_JPEG_MAGIC)) == _JPEG_MAGIC
        progress.update()
  progress.close()
  return files, dirs


def _read_source(source: str, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
  """Yields (path, bytes) for the wanted paths, in source order (streaming)."""
  if _is_archive(source):
    with tarfile.open(source, 'r|*') as tar:
      for member in tar:
        name = member.name.strip('/').removeprefix('./')
        if member.isfile() and name in wanted:
          yield name, tar.extractfile(member).read()
  else:
    for path in sorted(wanted):
      with open(os.path.join(source, path), 'rb') as f:
        yield path, f.read()


@dataclasses.dataclass(frozen=True)
class _Layout:
  prefix: str  # wrapping folder stripped from every path ('' if none)
  splits: dict[str, list[tuple[str, str]]]  # split -> [(path, class name)]
  class_names: tuple[str, ...]
  ignored: int
  all_jpeg: bool  # every image file starts like a JPEG


def _parse_layout(source: str) -> _Layout:
  """Maps the source listing to splits and classes; errors name bad paths."""
  sniffed, dirs = _list_source(source)
  files = [f for f in sniffed if not _is_ignored(tuple(f.split('/')))]
  ignored = len(sniffed) - len(files)
  all_jpeg = all(sniffed[f] for f in files)
  dirs = [d for d in dirs if not _is_ignored(tuple(d.split('/')))]
  if not files:
    raise LayoutError(f'{source} holds no image files; expected the layout '
                      '<split>/<class>/<image>.')
  # One wrapping folder (e.g. `mydata/train/cat/1.jpg`) is stripped.
  prefix = ''
  tops = {f.split('/')[0] for f in files}
  if len(tops) == 1 and all(f.count('/') == 3 for f in files):
    prefix = tops.pop() + '/'
    files = [f[len(prefix):] for f in files]
    dirs = [d[len(prefix):] for d in dirs if d.startswith(prefix)]
  splits: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
  classes = set()
  for f in sorted(files):
    parts = f.split('/')
    if len(parts) != 3:
      raise LayoutError(
          f"{os.path.join(source, prefix + f)}: expected every image at "
          '<split>/<class>/<image> (3 levels), this file is at '
          f'{len(parts)} level(s). Move it into a class folder or remove it.')
    splits[parts[0]].append((prefix + f, parts[1]))
    classes.add(parts[1])
  for d in dirs:  # empty class folders still define a class
    parts = d.split('/')
    if len(parts) == 2 and parts[0] in splits:
      classes.add(parts[1])
  return _Layout(prefix=prefix, splits=dict(sorted(splits.items())),
                 class_names=tuple(sorted(classes)), ignored=ignored,
                 all_jpeg=all_jpeg)


# ----------------------------------------------------------------- images ---

def _encode_image(data: bytes, path: str) -> bytes:
  """Returns the bytes to store; raises CorruptImageError naming path.

  JPEG and PNG bytes are kept as they are after a full test decode; other
  formats TF decodes are re-encoded as PNG.
  """
  try:
    if data.startswith(_JPEG_MAGIC):
      tf.io.decode_jpeg(data, channels=3)
      return data
    if data.startswith(_PNG_MAGIC):
      tf.io.decode_png(data, channels=3)
      return data
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.io.encode_png(image).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError,
          tf.errors.FailedPreconditionError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e)
    raise CorruptImageError(
        f'{path}: not a decodable image ({reason}). Fix or remove the file, '
        'or pass --skip_corrupt (prepare(..., skip_corrupt=True)) to skip '
        'such files with a warning.') from None


# ---------------------------------------------------------------- prepare ---

def _dataset_dir(name: str, data_dir: str) -> str:
  return os.path.join(data_dir, name, VERSION)


def _is_prepared(name: str, data_dir: str) -> bool:
  return tf.io.gfile.exists(
      os.path.join(_dataset_dir(name, data_dir), 'dataset_info.json'))


def _count_labels(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, int]]:
  """Reads the labels back from disk (images not decoded)."""
  names = builder.info.features['label'].names
  counts = {}
  for split in sorted(builder.info.splits.keys()):
    ds = builder.as_dataset(split=split,
                            decoders={'image': tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: ex['label']).batch(4096)
    per_class = np.zeros(len(names), np.int64)
    for labels in tfds.as_numpy(ds):
      per_class += np.bincount(labels, minlength=len(names))
    counts[split] = {c: int(n) for c, n in zip(names, per_class)}
  return counts


def _check_name(name: str) -> None:
  if not _NAME_RE.match(name):
    raise ValueError(
        f'--name={name!r} is not a valid TFDS dataset name: use lower-case '
        "letters, digits and '_', starting with a letter (e.g. 'my_images').")
  if name in tfds.list_builders(with_community_datasets=False):
    raise ValueError(
        f"--name={name!r} is a TFDS catalogue dataset; a prepared folder "
        'under that name would be shadowed by it. Choose another name, e.g. '
        f"'{name}_folder'.")


def prepare(source: str, name: str, data_dir: str | None,
            skip_corrupt: bool = False) -> PreparedInfo:
  """Writes `source` as TFDS dataset `name` under `data_dir` (no-op if done).

  data_dir None means TFDS's default (where tfds.builder looks by default).
  Returns a PreparedInfo with the class names and per-split, per-class counts
  as read back from the written dataset. Run it on one process only.
  """
  _check_name(name)
  data_dir = os.path.abspath(os.path.expanduser(
      data_dir or tfds_constants.get_default_data_dir()))
  if _is_prepared(name, data_dir):
    builder = tfds.builder(name, data_dir=data_dir)
    return PreparedInfo(
        name=name, data_dir=data_dir,
        class_names=tuple(builder.info.features['label'].names),
        counts=_count_labels(builder), already_prepared=True)
  if not os.path.exists(source):
    raise FileNotFoundError(
        f'--source={source!r} does not exist; give a folder or a '
        f'{"/".join(_ARCHIVE_SUFFIXES)} archive laid out '
        '<split>/<class>/<image>.')
  if not os.path.isdir(source) and not _is_archive(source):
    raise ValueError(f'--source={source!r} is neither a folder nor a '
                     f'{"/".join(_ARCHIVE_SUFFIXES)} archive.')

  layout = _parse_layout(source)
  if layout.prefix:
    print(f'Reading {layout.prefix} inside {source} as the top folder.',
          flush=True)
  print(f'Found splits {list(layout.splits)}, {len(layout.class_names)} '
        'classes; writing with TFDS (progress bars below) ...', flush=True)
  class_index = {c: i for i, c in enumerate(layout.class_names)}
  skipped: list[str] = []

  def examples(split: str) -> Iterator[tuple[str, dict]]:
    entries = dict(layout.splits[split])
    for path, data in _read_source(source, set(entries)):
      try:
        image = _encode_image(data, os.path.join(source, path))
      except CorruptImageError as e:
        if not skip_corrupt:
          raise
        logging.warning('Skipping %s', e)
        print(f'WARNING: skipping {e}', file=sys.stderr, flush=True)
        skipped.append(path)
        continue
      rel = path[len(layout.prefix) + len(split) + 1:]
      yield rel, {'image': image, 'label': class_index[entries[path]],
                  'file_name': rel}

  # 'jpeg' only when every stored image is JPEG bytes: readers then fuse
  # decode and crop without a per-image format check. Else 'png' (mixed).
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(
          shape=(None, None, 3),
          encoding_format='jpeg' if layout.all_jpeg else 'png'),
      'label': tfds.features.ClassLabel(names=list(layout.class_names)),
      'file_name': tfds.features.Text(),
  })
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=VERSION, data_dir=data_dir, features=features,
      split_datasets={s: examples(s) for s in layout.splits},
      description=f'Images prepared by byol_jax.prepare_folder from {source}.',
  )
  counts = _count_labels(tfds.builder(name, data_dir=data_dir))
  for split, per_class in counts.items():
    for c, n in per_class.items():
      if n == 0:
        logging.warning('Class %r has no images in split %r.', c, split)
        print(f"WARNING: class '{c}' has no images in split '{split}' "
              '(kept, count 0).', file=sys.stderr, flush=True)
  if skipped:
    print(f'WARNING: skipped {len(skipped)} corrupt file(s).',
          file=sys.stderr, flush=True)
  return PreparedInfo(name=name, data_dir=data_dir,
                      class_names=layout.class_names, counts=counts,
                      skipped=tuple(skipped), ignored=layout.ignored)


# -------------------------------------------------------------------- CLI ---
# Flags are defined only when run as a program, so importing this module from
# another absl program (the train CLI) cannot clash with its --data_dir.

def _define_flags() -> None:
  flags.DEFINE_string('source', None, 'Folder or .tar/.tar.gz archive laid '
                      'out <split>/<class>/<image>.')
  flags.DEFINE_string('name', None, 'Name of the TFDS dataset to write (then '
                      'use it as data.dataset).')
  flags.DEFINE_string('data_dir', None, 'TFDS data directory to write into '
                      '(then use it as data.data_dir).')
  flags.DEFINE_bool('skip_corrupt', False, 'Skip files that are not '
                    'decodable images, with a warning and a count, instead of '
                    'stopping.')
  flags.mark_flags_as_required(['source', 'name', 'data_dir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  info = prepare(f.source, f.name, f.data_dir, skip_corrupt=f.skip_corrupt)
  print(info.summary())


if __name__ == '__main__':
  _define_flags()
  app.run(main)
