"""Your own images, `<split>/<class>/<image>` in a folder or .tar(.gz), prepared on first use.

    python -m byol_jax.train --config=configs/folder.py --workdir=/tmp/run \
        --config.data.prepare_from=/path/to/images.tar.gz --config.data.dataset=my_images \
        --config.data.data_dir=/tmp/tfds
Defaults fit 32-px images such as the shared CIFAR-10 archive (train only: validation
= the last 5,000 training images). For large images set data.image_size=224 and
model.stem=imagenet.
"""

from byol_jax import config as config_lib


def get_config():
  config = config_lib.small_images_config('my_images')
  config.data.data_dir = '~/tensorflow_datasets'
  config.data.test_split = config.data.eval_split  # archives without a test split
  return config
