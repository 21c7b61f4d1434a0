"""The generated demo dataset: format, determinism, balance, and that only shape says the class."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from byol_jax import demo_data


@functools.lru_cache(maxsize=None)
def _dataset(num_examples: int = 2000, seed: int = 0):
  return demo_data.render_demo_dataset(num_examples, seed)


def _split_accuracy(features: np.ndarray, labels: np.ndarray, classify) -> float:
  """Fits on the first 80%, scores on the rest."""
  cut = int(0.8 * len(labels))
  predicted = classify(features[:cut], labels[:cut], features[cut:])
  return float(np.mean(predicted == labels[cut:]))


def _nearest_class_mean(train, train_labels, test):
  means = np.stack([train[train_labels == c].mean(0) for c in range(demo_data.NUM_CLASSES)])
  distances = ((test[:, None] - means[None]) ** 2).sum(-1)
  return distances.argmin(1)


def _nearest_neighbour(train, train_labels, test):
  distances = (test ** 2).sum(1)[:, None] - 2 * test @ train.T + (train ** 2).sum(1)[None]
  return train_labels[distances.argmin(1)]


def test_format():
  images, labels = demo_data.make_demo_dataset(30, seed=1, image_size=24)
  assert images.shape == (30, 24, 24, 3) and images.dtype == np.uint8
  assert labels.shape == (30,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < len(demo_data.DEMO_CLASS_NAMES) == 10
  assert images.std() > 20  # not blank


def test_deterministic_from_the_seed():
  a_images, a_labels = demo_data.make_demo_dataset(300, seed=5)
  b_images, b_labels = demo_data.make_demo_dataset(300, seed=5)
  assert a_images.tobytes() == b_images.tobytes()
  np.testing.assert_array_equal(a_labels, b_labels)
  c_images, c_labels = demo_data.make_demo_dataset(300, seed=6)
  assert np.mean(a_images != c_images) > 0.5
  assert np.any(a_labels != c_labels)


def test_classes_are_balanced_and_shuffled():
  _, labels = demo_data.make_demo_dataset(1000, seed=2)
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), 100)
  assert np.mean(labels != np.arange(1000) % 10) > 0.5
  _, labels = demo_data.make_demo_dataset(1003, seed=2)
  counts = np.bincount(labels, minlength=10)
  assert counts.max() - counts.min() <= 1 and counts.sum() == 1003


def test_shapes_are_distinct():
  """No two classes draw (nearly) the same mask in the canonical pose.

  Identical masks have IoU 1; a disk and a square of similar area already reach ~0.82, so
  0.9 only flags near-duplicates. Separability under random pose is tested below.
  """
  coords = (np.arange(64) + 0.5) / 64 * 2 - 1
  u, v = np.meshgrid(coords, coords, indexing='xy')
  masks = [demo_data.shape_mask(c, u, v) for c in range(demo_data.NUM_CLASSES)]
  for i, a in enumerate(masks):
    assert 0.1 < a.mean() < 0.9, demo_data.DEMO_CLASS_NAMES[i]
    for j in range(i):
      iou = np.sum(a & masks[j]) / np.sum(a | masks[j])
      assert iou < 0.9, (demo_data.DEMO_CLASS_NAMES[i], demo_data.DEMO_CLASS_NAMES[j], iou)


def test_shape_is_drawn_visibly():
  images, _, coverage = _dataset()
  x = images.astype(np.float32) / 255.
  inside, outside = coverage > 0.9, coverage < 0.1
  assert np.all(inside.sum((1, 2)) >= 10) and np.all(outside.sum((1, 2)) >= 100)
  mean_in = (x * inside[..., None]).sum((1, 2)) / inside.sum((1, 2))[:, None]
  mean_out = (x * outside[..., None]).sum((1, 2)) / outside.sum((1, 2))[:, None]
  assert np.mean(np.linalg.norm(mean_in - mean_out, axis=1) > 0.15) > 0.95


def test_shape_gives_the_class_but_colour_position_and_raw_pixels_do_not():
  images, labels, coverage = _dataset()
  # Learnable: a pose-invariant-in-translation view of the shape (|FFT| of its mask)
  # classifies almost perfectly with 1-NN, despite random scale and rotation.
  spectrum = np.abs(np.fft.fft2(coverage)).reshape(len(labels), -1)
  assert _split_accuracy(spectrum, labels, _nearest_neighbour) > 0.9
  # Not trivial: chance is 0.1, with a standard deviation of 0.015 on 400 test images;
  # 0.16 is 4 of them (the seed is fixed, so this is deterministic).
  pixels = images.reshape(len(labels), -1).astype(np.float32) / 255.
  assert _split_accuracy(pixels, labels, _nearest_class_mean) < 0.2
  colour = pixels.reshape(len(labels), -1, 3).mean(1)
  assert _split_accuracy(colour, labels, _nearest_class_mean) < 0.16
  rows, cols = np.mgrid[:32, :32]
  mass = coverage.sum((1, 2))
  centroid = np.stack([(coverage * rows).sum((1, 2)) / mass,
                       (coverage * cols).sum((1, 2)) / mass], axis=1)
  assert _split_accuracy(centroid, labels, _nearest_class_mean) < 0.16


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match='num_examples'):
    demo_data.make_demo_dataset(0, seed=0)
  with pytest.raises(ValueError, match='image_size'):
    demo_data.make_demo_dataset(10, seed=0, image_size=4)
  with pytest.raises(ValueError, match='class_index'):
    demo_data.shape_mask(10, np.zeros(1), np.zeros(1))
