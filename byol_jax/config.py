"""The full pretraining config with paper defaults, and its validation.

Each file in `configs/` starts from `base_config()` and overrides what its recipe
changes; `validate(config, ...)` runs before anything compiles and names every bad
value together with the accepted range.
"""

from __future__ import annotations

import ml_collections

from byol_jax import augmentations
from byol_jax import networks
from byol_jax import update

# Official presets keyed by epochs (spec 4.3): base lr, weight decay, tau_base.
IMAGENET_PRESETS = {
    40: dict(base_lr=0.45, weight_decay=1e-6, base_target_ema=0.97),
    100: dict(base_lr=0.45, weight_decay=1e-6, base_target_ema=0.99),
    300: dict(base_lr=0.30, weight_decay=1e-6, base_target_ema=0.99),
    1000: dict(base_lr=0.20, weight_decay=1.5e-6, base_target_ema=0.996),
}


def base_config() -> ml_collections.ConfigDict:
  """Paper main setting: ResNet-50, ImageNet, batch 4096, 1000 epochs."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # JAX's PRNG bit generator. True is JAX's default since 0.5; the official code ran on
  # JAX releases whose threefry was not partitionable, so only False reproduces its
  # init and augmentation keys bit for bit (use_official_behaviour sets it).
  config.threefry_partitionable = True

  config.data = ml_collections.ConfigDict(dict(
      dataset='imagenet2012',
      data_dir=ml_collections.FieldReference(None, field_type=str),
      train_split='train',
      eval_split='train[-10009:]',  # paper's local validation: the last 10,009 images
      test_split='validation',
      image_size=224,
      crop_sampler='official',      # single attempt (official); 'inception' retries
      crop_area_range=(0.08, 1.0),
      crop_aspect_range=(3. / 4., 4. / 3.),
      eval_crop_fraction=0.875,
      shuffle_buffer=10_000,
      skip_corrupt=False,
      prepare_from='',              # folder/.tar(.gz) to prepare as `dataset` on first use
  ))

  config.model = networks.model_config()

  config.augmentation = ml_collections.ConfigDict(dict(
      enabled=True,
      rng='per_image',       # 'official': the official per-device key chain (spec 6.3, 7.4)
      view1=augmentations.view_config(1),
      view2=augmentations.view_config(2),
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='lars',
      base_lr=0.2,           # peak lr = base_lr * batch_size / 256
      weight_decay=1.5e-6,
      eta=1e-3,
      momentum=0.9,
      warmup_epochs=10.,
      warmup_steps=-1,       # -1: derived from warmup_epochs
  ))

  config.training = ml_collections.ConfigDict(dict(
      batch_size=4096,       # global, effective (after accumulation)
      epochs=1000.,
      total_steps=-1,        # -1: derived as epochs * num_train_examples // batch_size
      base_target_ema=0.996,
      accumulation_steps=1,
      log_every=100,
      checkpoint_every=1000,
      keep_checkpoints=3,
      eval_every=5000,       # 0 disables periodic evaluation (the final one still runs)
      max_steps_per_run=0,   # >0: checkpoint and stop after this many steps (job limits)
  ))

  config.evaluation = ml_collections.ConfigDict(dict(
      batch_size=1000,
      knn_k=200,
      knn_temperature=0.1,
      knn_train_split='',    # '' -> data.train_split
      knn=True,
      at_start=False,        # also evaluate the initial encoder (a baseline for the run)
  ))
  return config


def apply_imagenet_preset(config: ml_collections.ConfigDict, epochs: int) -> None:
  """Sets epochs, base lr, weight decay and tau_base from the official preset table."""
  if epochs not in IMAGENET_PRESETS:
    raise ValueError(f'no official preset for {epochs} epochs; presets exist for '
                     f'{sorted(IMAGENET_PRESETS)} (other epoch counts: set the values).')
  preset = IMAGENET_PRESETS[epochs]
  config.training.epochs = float(epochs)
  config.optimizer.base_lr = preset['base_lr']
  config.optimizer.weight_decay = preset['weight_decay']
  config.training.base_target_ema = preset['base_target_ema']


def use_official_behaviour(config: ml_collections.ConfigDict) -> None:
  """Switches every flagged deviation of the README to the official code's behaviour.

  Call it after choosing the encoder. Sets zero-init of the last bottleneck BN scale,
  the independent target init, the official BN initialisation from the first batch
  (consumed, not trained on), the official augmentation key chain, and the
  non-partitionable threefry bits of the JAX releases the official code ran on. What has
  no flag (uint8 host crops, the data order, the target skipping its unused heads) stays
  as documented.
  """
  # Haiku's BlockV1 zero-inits the last BN scale of bottleneck blocks only.
  config.model.zero_init_last_bn = networks.ENCODERS[config.model.encoder].bottleneck
  config.model.target_init = 'independent'
  config.model.bn_init = 'first_batch'
  config.augmentation.rng = 'official'
  config.threefry_partitionable = False


def small_images_config(dataset: str) -> ml_collections.ConfigDict:
  """ResNet-18 with the CIFAR stem at 32 px, batch 512, 1000 epochs (solo-learn's recipe).

  Validation is the last 5,000 training images (the paper's CIFAR-10 split, Table 10),
  `test` the dataset's test split.
  """
  config = base_config()
  config.data.dataset = dataset
  config.data.train_split = 'train[:-5000]'
  config.data.eval_split = 'train[-5000:]'
  config.data.test_split = 'test'
  config.data.image_size = 32
  config.data.shuffle_buffer = 50_000

  config.model.encoder = 'resnet18'
  config.model.stem = 'cifar'

  config.optimizer.base_lr = 1.0          # peak 2.0 at batch 512, as solo-learn's LARS
  config.optimizer.weight_decay = 1e-5
  config.training.batch_size = 512
  config.training.epochs = 1000
  config.training.base_target_ema = 0.99
  config.training.log_every = 50
  config.training.eval_every = 10_000
  config.evaluation.at_start = True
  return config


def validate(config: ml_collections.ConfigDict, *, device_count: int,
             num_train_examples: int | None = None) -> None:
  """Raises ValueError listing every invalid value with what is accepted."""
  errors = []

  def check(ok, message):
    if not ok:
      errors.append(message)

  training = config.training
  try:
    networks.validate_model_config(config.model)
  except ValueError as e:
    errors.append(str(e))
  batch, micro = training.batch_size, training.accumulation_steps
  check(isinstance(micro, int) and micro >= 1,
        f'training.accumulation_steps={micro!r} must be an integer >= 1.')
  check(isinstance(batch, int) and batch >= 1,
        f'training.batch_size={batch!r} must be a positive integer.')
  if not errors:
    check(batch % (device_count * micro) == 0,
          f'training.batch_size={batch} must be divisible by device_count ({device_count}) '
          f'x accumulation_steps ({micro}) = {device_count * micro}; use e.g. '
          f'{max(1, batch // (device_count * micro)) * device_count * micro}.')
  check(training.epochs > 0, f'training.epochs={training.epochs!r} must be > 0.')
  check(0. <= training.base_target_ema <= 1.,
        f'training.base_target_ema={training.base_target_ema!r} must be in [0, 1].')
  opt = config.optimizer
  check(opt.base_lr > 0, f'optimizer.base_lr={opt.base_lr!r} must be > 0.')
  check(opt.weight_decay >= 0,
        f'optimizer.weight_decay={opt.weight_decay!r} must be >= 0.')
  check(opt.warmup_epochs >= 0,
        f'optimizer.warmup_epochs={opt.warmup_epochs!r} must be >= 0.')
  check(0 <= opt.momentum < 1, f'optimizer.momentum={opt.momentum!r} must be in [0, 1).')
  check(opt.name == 'lars', f"optimizer.name={opt.name!r}: only 'lars' is implemented.")
  check(config.model.target_init in ('copy', 'independent'),
        f"model.target_init={config.model.target_init!r} must be 'copy' or 'independent'.")
  check(config.augmentation.get('rng', 'per_image') in update.AUGMENTATION_RNG_MODES,
        f'augmentation.rng={config.augmentation.get("rng")!r} must be one of '
        f'{update.AUGMENTATION_RNG_MODES}.')
  check(isinstance(config.get('threefry_partitionable', True), bool),
        f'threefry_partitionable={config.get("threefry_partitionable")!r} must be True '
        '(JAX default) or False (the official code\'s PRNG bits).')
  check(config.data.crop_sampler in ('official', 'inception'),
        f"data.crop_sampler={config.data.crop_sampler!r} must be 'official' or 'inception'.")
  check(config.data.image_size >= 8,
        f'data.image_size={config.data.image_size!r} must be >= 8 pixels.')
  for key in ('log_every', 'checkpoint_every', 'keep_checkpoints'):
    check(training[key] >= 1, f'training.{key}={training[key]!r} must be >= 1.')
  check(training.eval_every >= 0, f'training.eval_every={training.eval_every!r} must be '
        '>= 0 (0 disables periodic evaluation).')
  check(config.evaluation.knn_k >= 1,
        f'evaluation.knn_k={config.evaluation.knn_k!r} must be >= 1.')
  check(config.evaluation.knn_temperature > 0,
        f'evaluation.knn_temperature={config.evaluation.knn_temperature!r} must be > 0.')
  if num_train_examples is not None and not errors:
    settings = update.settings_from_config(config, num_train_examples, num_classes=1)
    check(settings.total_steps >= 1,
          f'training.epochs={training.epochs} over {num_train_examples} examples at batch '
          f'{batch} gives {settings.total_steps} steps; train for at least one step.')
    check(settings.warmup_steps < settings.total_steps,
          f'the warmup ({settings.warmup_steps} steps from optimizer.warmup_epochs='
          f'{opt.warmup_epochs}) must be shorter than training ({settings.total_steps} '
          'steps); lower optimizer.warmup_epochs or raise training.epochs.')
  if errors:
    raise ValueError('invalid config:\n  ' + '\n  '.join(errors))
