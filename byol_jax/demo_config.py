"""The built-in demo: BYOL on generated shapes, offline, a few minutes on a laptop CPU.

`byol-jax-train --workdir=/tmp/demo` runs it (it is the default when no --config is
given; `configs/demo.py` is the same config as a file). It ends by printing the kNN
accuracy of the learned encoder next to the same encoder's at initialisation.
"""

from byol_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.dataset = 'demo'          # byol_jax.demo_data: 10 shape classes, 32 px
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.test_split = 'test'
  config.data.image_size = 32
  config.data.demo_train_examples = 2560
  config.data.demo_test_examples = 512
  config.data.shuffle_buffer = 2560
  # Crops of at least 20% of the image (paper: 8%): at 32 px smaller crops often miss
  # the shape entirely, and a few minutes of training cannot afford that.
  config.data.crop_area_range = (0.2, 1.0)

  config.model.encoder = 'resnet18'
  config.model.width_multiplier = 0.125
  config.model.stem = 'cifar'
  config.model.projector_hidden_size = 512
  config.model.predictor_hidden_size = 512
  config.model.projection_size = 128

  config.optimizer.base_lr = 8.0        # peak lr 4: short LARS runs need large lrs
  config.optimizer.weight_decay = 1e-6
  config.optimizer.warmup_epochs = 2
  config.training.batch_size = 128
  config.training.epochs = 12
  config.training.base_target_ema = 0.99
  config.training.log_every = 20
  config.training.checkpoint_every = 100
  config.training.eval_every = 0
  config.evaluation.batch_size = 256
  config.evaluation.knn_k = 20
  config.evaluation.at_start = True
  return config
