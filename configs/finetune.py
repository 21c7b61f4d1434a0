r"""Fine-tuning / semi-supervised protocol (spec 8.2): whole network, lr x epochs sweep.

    python -m byol_jax.finetune --config=configs/finetune.py[:preset] --workdir=/tmp/ft \
        --config.pretrained=<pretraining workdir | step dir | .pkl> [--config.label_fraction=0.1]

Presets: the data presets of linear evaluation (imagenet, cifar10, folder, demo), plus
  imagenet_1pct, imagenet_10pct  the SimCLR fixed subsets of Table 2 (TFDS
                      `imagenet2012_subset/1pct|10pct`, prepared by hand like
                      imagenet2012); validation = the last 10,009 images of the full
                      imagenet2012 train split (a subset image may fall among them: the
                      subsets are drawn from the whole train split), test = validation.
label_fraction < 1 draws a class-balanced subset of data.train_split instead
(reproducible from subset_seed).
"""

import ml_collections

from byol_jax import linear_eval

PAPER_LRS = (0.01, 0.02, 0.05, 0.1, 0.005)
PAPER_EPOCHS = (30., 50.)


def get_config(preset: str = 'imagenet') -> ml_collections.ConfigDict:
  subset = {'imagenet_1pct': '1pct', 'imagenet_10pct': '10pct'}.get(preset)
  config = ml_collections.ConfigDict()
  config.pretrained = ''
  config.random_init = False
  config.seed = 0
  config.data = linear_eval.eval_data_config('imagenet' if subset else preset)
  if subset:
    config.data.dataset = f'imagenet2012_subset/{subset}'
    config.data.eval_dataset = 'imagenet2012'
    config.data.train_split = 'train'
  config.label_fraction = 1.0     # < 1: class-balanced subset of data.train_split
  config.subset_seed = 0
  config.bn_sync = False          # official: per-device BN statistics while fine-tuning
  config.optimizer = ml_collections.ConfigDict(dict(
      base_lrs=PAPER_LRS, lr_scaling='linear', momentum=0.9))
  config.training = ml_collections.ConfigDict(dict(
      batch_size=1024, epochs_grid=PAPER_EPOCHS, log_every=100))
  config.evaluation = ml_collections.ConfigDict(dict(
      batch_size=1000, selection_metric='top1_accuracy'))
  if preset in ('cifar10', 'folder'):
    config.training.batch_size = 256
  elif preset == 'demo':
    config.training.update(batch_size=128, epochs_grid=(5.,), log_every=20)
    config.optimizer.base_lrs = (0.05, 0.1)
    config.evaluation.batch_size = 512
  return config
