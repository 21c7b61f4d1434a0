"""ImageNet ResNet-50 presets of the paper / official code: `configs/imagenet.py:<epochs>`.

    python -m byol_jax.train --config=configs/imagenet.py:1000 --workdir=gs://.../r50
`configs/imagenet.py:1000,official` also switches every flagged deviation to the
official code's behaviour (`config.use_official_behaviour`).
Epochs 40/100/300/1000 take the official (base lr, weight decay, tau_base) preset; any
other count keeps the 1000-epoch values (set them with --config.*). Batch 4096 on
512 TPU v3 cores in the paper (1000 epochs: 312,784 steps, about 8 h). The TFDS
`imagenet2012` dataset needs its manual download (see the README).
"""

from byol_jax import config as config_lib


def get_config(arg: str = '1000'):
  epochs, *options = arg.split(',')
  if options not in ([], ['official']):
    raise ValueError(f'configs/imagenet.py:{arg}: expected <epochs> or <epochs>,official.')
  config = config_lib.base_config()  # ResNet-50 1x, batch 4096, 224 px
  epochs = int(epochs)
  if epochs in config_lib.IMAGENET_PRESETS:
    config_lib.apply_imagenet_preset(config, epochs)
  else:
    config.training.epochs = float(epochs)
  config.training.eval_every = 10_000
  if options:
    config_lib.use_official_behaviour(config)
  return config
