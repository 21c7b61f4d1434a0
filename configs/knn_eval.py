r"""Weighted kNN evaluation of a pretrained encoder (the pretraining monitor's classifier).

    python -m byol_jax.knn_eval --config=configs/knn_eval.py[:preset] --workdir=/tmp/knn \
        --config.pretrained=<pretraining workdir | step dir | .pkl | .npz>

The bank is data.train_split (centre crops); queries are data.eval_split and
data.test_split (each reported when set). k and the temperature are fixed (no
selection). Presets as linear evaluation: imagenet, cifar10, folder, demo.
"""

import ml_collections

from byol_jax import linear_eval


def get_config(preset: str = 'imagenet') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.pretrained = ''
  config.random_init = False
  config.seed = 0
  config.data = linear_eval.eval_data_config(preset)
  config.knn = ml_collections.ConfigDict(dict(k=200, temperature=0.1))
  config.evaluation = ml_collections.ConfigDict(dict(batch_size=1000))
  return config
