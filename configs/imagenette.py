"""The official README's small recipe: imagenette/160px-v2, ResNet-18, 128 px, one GPU.

ResNet-18 with the official group-0 projection, 1000 epochs at batch 256, base lr 2.0,
weight decay 1e-6, tau 0.996 (README: about 92.3% online-classifier top-1 in ~4 h on a
V100). The README replaces every 224 by 128, which makes the eval crop 128/160 = 0.8.
"""

from byol_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.dataset = 'imagenette/160px-v2'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'   # the README evaluates on TFDS validation
  config.data.test_split = 'validation'
  config.data.image_size = 128
  config.data.eval_crop_fraction = 0.8
  config.model.encoder = 'resnet18'
  config.optimizer.base_lr = 2.0
  config.optimizer.weight_decay = 1e-6
  config.training.batch_size = 256
  config.training.epochs = 1000
  config.training.base_target_ema = 0.996
  config.training.eval_every = 5000
  config.evaluation.batch_size = 25 * 8
  return config
