r"""Export parity on real images: the encoder's features in Haiku, after an npz round
trip, and in PyTorch from the torchvision export.

  python experiments/export_parity.py --checkpoint=<workdir | step dir | .pkl | .npz> \
      --dataset=cifar10_shared --data_dir=/tmp/tfds --split='train[-5000:]' --num_images=512

Prints, for the npz round trip and the torchvision state dict (torchvision's own
module where the architecture is a stock one and torchvision imports, the module of
`byol_jax.export` otherwise), the relative Frobenius error of the [N, D] features
against Haiku's, and the largest absolute difference. Needs torch (+ safetensors);
torchvision is optional.
"""

import os
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np

from byol_jax import config as config_lib
from byol_jax import export
from byol_jax import input_pipeline
from byol_jax import networks
from byol_jax import official_import

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Pretrained source.', required=True)
_DATASET = flags.DEFINE_string('dataset', 'demo', 'TFDS name (or demo) of the images.')
_DATA_DIR = flags.DEFINE_string('data_dir', '~/tensorflow_datasets', 'TFDS data_dir.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split the images come from.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Centre-crop size.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 512, 'How many images.')


def _errors(features: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
  relative = float(np.linalg.norm(features - reference) / np.linalg.norm(reference))
  return relative, float(np.max(np.abs(features - reference)))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import torch  # pylint: disable=g-import-not-at-top
  pretrained = official_import.load_checkpoint(os.path.expanduser(_CHECKPOINT.value))
  model = pretrained.config.model
  data = config_lib.base_config().data
  data.update(dataset=_DATASET.value, data_dir=_DATA_DIR.value,
              image_size=_IMAGE_SIZE.value)
  batch = next(input_pipeline.eval_batches(data, split=_SPLIT.value,
                                           global_batch_size=_NUM_IMAGES.value,
                                           process_index=0, process_count=1,
                                           local_device_count=1))
  images = batch['images'][0][batch['mask'][0]]
  encoder = networks.make_encoder_network(model)

  def haiku_features(source):
    out, _ = encoder.apply(source.online_params, source.online_state, images, False)
    return np.asarray(out, np.float64)

  reference = haiku_features(pretrained)
  normalised = ((images / 255. - np.asarray(networks.IMAGENET_MEAN)) /
                np.asarray(networks.IMAGENET_STD)).transpose(0, 3, 1, 2).astype(np.float32)
  print(f'{model.encoder} x{model.width_multiplier:g} ({model.stem} stem) from '
        f'{pretrained.source}, step {pretrained.step}; {len(images)} images of '
        f'{_DATASET.value} {_SPLIT.value} at {_IMAGE_SIZE.value} px; features '
        f'{reference.shape}, mean |feature| {np.mean(np.abs(reference)):.4g}')
  with tempfile.TemporaryDirectory() as tmp:
    npz = os.path.join(tmp, 'encoder.npz')
    export.save_npz(npz, pretrained)
    relative, largest = _errors(haiku_features(export.load_npz(npz)), reference)
    print(f'npz round trip:          relative error {relative:.3e}, max abs diff {largest:.3e}')
    safetensors_path = os.path.join(tmp, 'encoder.safetensors')
    metadata = export.save_torchvision(safetensors_path, pretrained)
    seen = set()  # without a stock constructor both calls build the same module
    for use_torchvision in (True, False):
      torch_model = export.torchvision_model(safetensors_path, use_torchvision=use_torchvision)
      kind = type(torch_model).__module__.split('.')[0]
      if kind in seen:
        continue
      seen.add(kind)
      with torch.no_grad():
        features = torch_model(torch.from_numpy(normalised)).double().numpy()
      relative, largest = _errors(features, reference)
      print(f'torch ({kind + " module":18s}): relative error {relative:.3e}, '
            f'max abs diff {largest:.3e}')
    print(f"torchvision constructor: {metadata['torchvision_constructor']}")


if __name__ == '__main__':
  app.run(main)
