"""Export: npz round trip, torchvision naming and layout, and torch feature parity."""

import json

import numpy as np
import pytest

from byol_jax import export
from byol_jax import networks
from test_official_import import assert_trees_equal, synthetic_pretrained, tiny_model


def _images(size: int, seed: int = 1, count: int = 2) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _haiku_features(pretrained, images):
  encoder = networks.make_encoder_network(pretrained.config.model)
  out, _ = encoder.apply(pretrained.online_params, pretrained.online_state, images, False)
  return np.asarray(out)


def test_npz_round_trip_gives_identical_features(tmp_path):
  original = synthetic_pretrained(tiny_model())
  path = str(tmp_path / 'encoder.npz')
  export.save_npz(path, original)
  with np.load(path) as data:
    keys = set(data.files)
    metadata = json.loads(str(data[export.METADATA_KEY]))
  assert 'tiny_res_net/~/initial_conv/w' in keys
  assert 'tiny_res_net/~/initial_batchnorm/~/mean_ema/average' in keys
  assert not any(k.startswith(('projector', 'predictor', 'classifier')) for k in keys)
  assert metadata['model']['encoder'] == 'tiny' and metadata['representation_size'] == 8
  loaded = export.load_npz(path)
  params, state = export.encoder_tree(original)
  assert_trees_equal(loaded.online_params, params)
  assert_trees_equal(loaded.online_state, state)
  assert loaded.config.model.to_dict() == original.config.model.to_dict()
  images = _images(16)
  np.testing.assert_array_equal(_haiku_features(loaded, images),
                                _haiku_features(original, images))


def test_torchvision_names_and_layout():
  """ResNet-18 with the official group-0 projection, and ResNet-50's v1.5 bottleneck."""
  r18 = export.torchvision_state_dict(synthetic_pretrained(
      networks.model_config(encoder='resnet18', width_multiplier=0.25), encoder_only=True))
  assert r18['conv1.weight'].shape == (16, 3, 7, 7)  # OIHW
  assert r18['layer1.0.downsample.0.weight'].shape == (16, 16, 1, 1)  # group-0 projection
  assert 'layer1.1.downsample.0.weight' not in r18
  assert r18['layer2.0.conv1.weight'].shape == (32, 16, 3, 3)
  assert r18['layer4.1.bn2.running_var'].shape == (128,)
  assert r18['bn1.num_batches_tracked'].dtype == np.int64
  assert not any(k.startswith('fc.') for k in r18)
  r50 = export.torchvision_state_dict(synthetic_pretrained(
      networks.model_config(encoder='resnet50', width_multiplier=0.125), encoder_only=True))
  assert r50['layer2.0.conv2.weight'].shape == (16, 16, 3, 3)  # the 3x3 carries the stride
  assert r50['layer2.0.conv3.weight'].shape == (64, 16, 1, 1)
  assert r50['layer1.0.downsample.1.running_mean'].shape == (32,)
  assert len([k for k in r50 if k.endswith('conv2.weight')]) == 16
  no_projection = export.torchvision_state_dict(synthetic_pretrained(networks.model_config(
      encoder='resnet18', width_multiplier=0.25, group0_projection=False), encoder_only=True))
  assert 'layer1.0.downsample.0.weight' not in no_projection


@pytest.mark.parametrize('encoder,width,stem,size', [
    ('resnet18', 1., 'imagenet', 32),    # stock torchvision name, group-0 projection
    ('resnet50', 0.125, 'imagenet', 32),  # bottleneck, non-torchvision width
    ('tiny', 1., 'cifar', 16),            # CIFAR stem: stride-2 convs in the groups only
])
def test_torch_model_gives_the_haiku_features(tmp_path, encoder, width, stem, size):
  torch = pytest.importorskip('torch')
  pretrained = synthetic_pretrained(networks.model_config(
      encoder=encoder, width_multiplier=width, stem=stem), image_size=size, encoder_only=True)
  path = str(tmp_path / 'encoder.safetensors')
  metadata = export.save_torchvision(path, pretrained)
  assert metadata['padding'] == 'tf_same'
  images = _images(size, count=4)
  normalised = ((images / 255. - np.asarray(networks.IMAGENET_MEAN)) /
                np.asarray(networks.IMAGENET_STD)).transpose(0, 3, 1, 2).astype(np.float32)
  expected = _haiku_features(pretrained, images)

  def torch_features(model):
    with torch.no_grad():
      return model(torch.from_numpy(normalised)).numpy()

  def relative_error(features):
    return np.linalg.norm(features - expected) / np.linalg.norm(expected)

  for use_torchvision in (True, False):  # torchvision's module (when it imports) and ours
    model = export.torchvision_model(path, use_torchvision=use_torchvision)
    assert relative_error(torch_features(model)) < 1e-4
  # Without the SAME pre-hooks PyTorch's symmetric padding gives other features: the
  # image size exercises the asymmetric case.
  from safetensors.torch import load_file
  plain = export.build_torch_resnet(pretrained.config.model)
  plain.load_state_dict(load_file(path))
  assert relative_error(torch_features(plain.eval())) > 1e-2


def test_same_padding_arithmetic():
  assert export._same_pads(32, 7, 2) == (2, 3)
  assert export._same_pads(33, 7, 2) == (3, 3)
  assert export._same_pads(16, 3, 2) == (0, 1)
  assert export._same_pads(16, 1, 2) == (0, 0)
  assert export._same_pads(16, 3, 1) == (1, 1)
