"""Appendix G: batch 512, 1000 epochs, base lr 0.4, tau_base 0.9995, wd 1.5e-6 (73.7%)."""

from byol_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config_lib.apply_imagenet_preset(config, 1000)
  config.training.batch_size = 512
  config.optimizer.base_lr = 0.4
  config.training.base_target_ema = 0.9995
  return config
