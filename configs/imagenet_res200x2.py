"""ResNet-200 2x, 1000 epochs, batch 4096: the paper's 79.6% top-1 (Table 1)."""

from byol_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config_lib.apply_imagenet_preset(config, 1000)
  config.model.encoder = 'resnet200'
  config.model.width_multiplier = 2.0
  return config
