"""A CPU-sized CIFAR-10 run on the JPEG archive `train/<class>/<n>.jpg` (no test split).

ResNet-18 at width 0.25 (CIFAR stem), batch 256, 3 epochs (527 steps, about 20
minutes at ~100 images/s on 2 CPU cores); validation =
the last 5,000 training images. Prepares the archive on first use:
    python -m byol_jax.train --config=configs/cifar10_cpu.py --workdir=/tmp/cifar_cpu \
        --config.data.prepare_from=../shared/data/cifar10/train.tar.gz \
        --config.data.data_dir=/tmp/tfds
"""

from byol_jax import config as config_lib


def get_config():
  config = config_lib.small_images_config('cifar10_shared')
  config.data.data_dir = '~/tensorflow_datasets'
  config.data.test_split = config.data.eval_split
  config.model.width_multiplier = 0.25
  config.training.batch_size = 256
  config.training.epochs = 3
  config.optimizer.warmup_epochs = 0.1
  config.optimizer.base_lr = 4.0        # peak lr 4: short runs need LARS's large lrs
  config.training.log_every = 10
  config.training.checkpoint_every = 50
  config.training.eval_every = 0
  config.evaluation.knn_k = 200
  return config
