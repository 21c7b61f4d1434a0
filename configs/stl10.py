"""STL-10: pretrain on unlabelled + train (105k images) at 96 px, ResNet-18 CIFAR stem.

Validation: the last 500 labelled training images; monitoring kNN uses the rest of
`train` as its bank.
"""

from byol_jax import config as config_lib


def get_config():
  config = config_lib.small_images_config('stl10')
  config.data.train_split = 'unlabelled+train[:-500]'
  config.data.eval_split = 'train[-500:]'
  config.data.image_size = 96
  config.data.shuffle_buffer = 20_000
  config.training.batch_size = 256
  config.training.epochs = 400
  config.optimizer.base_lr = 1.0
  config.evaluation.knn_train_split = 'train[:-500]'
  return config
