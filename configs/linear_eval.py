r"""Linear evaluation (paper protocol, spec 8.2): frozen encoder, lr sweep, select on validation.

    python -m byol_jax.linear_eval --config=configs/linear_eval.py[:preset] \
        --workdir=/tmp/linear --config.pretrained=<pretraining workdir | step dir | .pkl>

Presets (the data section decides the dataset: a different one than pretraining is
transfer):
  imagenet (default)  paper C.1: train = TFDS train less its last 10,009 images,
                      validation = those 10,009, test = the official validation set;
                      batch 1024, 80 epochs, base lrs {0.4, 0.3, 0.2, 0.1, 0.05} x B/256.
  cifar10             TFDS cifar10: 45,000 train / 5,000 validation / 10,000 test, 32 px,
                      fast path over 10 precomputed augmented feature passes.
  folder              a dataset prepared with `python -m byol_jax.prepare_folder`
                      (--config.data.dataset, --config.data.data_dir), train only (e.g.
                      the shared CIFAR-10 archive): train = all but the last 10,000,
                      validation = the next 5,000, test = the last 5,000 (the pretraining
                      configs' held-out validation, never seen by pretraining).
  demo                the built-in synthetic dataset, seconds on a CPU.
Learning-rate scaling: the paper does not say whether its grid is multiplied by
B/256 (spec 14.2 [U]); the official code scales, so the default is
optimizer.lr_scaling='linear'; 'none' uses the grid values as they are.
"""

import ml_collections

from byol_jax import linear_eval

PAPER_LRS = (0.4, 0.3, 0.2, 0.1, 0.05)


def get_config(preset: str = 'imagenet') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.pretrained = ''          # byol-jax workdir / step dir, official .pkl, or .npz
  config.random_init = False      # evaluate the checkpoint's architecture at its init
  config.seed = 0
  config.data = linear_eval.eval_data_config(preset)
  config.optimizer = ml_collections.ConfigDict(dict(
      base_lrs=PAPER_LRS,
      lr_scaling='linear',        # 'linear': peak = base * B / 256; 'none': peak = base
      momentum=0.9,               # SGD, Nesterov, no weight decay, cosine, no warmup
  ))
  config.training = ml_collections.ConfigDict(dict(
      batch_size=1024, epochs=80., total_steps=-1, log_every=500))
  config.evaluation = ml_collections.ConfigDict(dict(
      batch_size=1000, selection_metric='top1_accuracy'))
  config.fast_features = False    # precompute frozen features once (small datasets)
  config.feature_epochs = 10      # augmented passes for the fast path; 0: centre crops only
  if preset in ('cifar10', 'folder'):
    config.training.update(batch_size=512, epochs=100., log_every=100)
    config.fast_features = True
  elif preset == 'demo':
    config.training.update(batch_size=256, epochs=20., log_every=50)
    config.evaluation.batch_size = 512
    config.fast_features = True
    config.feature_epochs = 4
  return config
