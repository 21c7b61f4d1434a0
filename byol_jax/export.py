r"""Export of a pretrained encoder: flat `.npz` (Haiku names) or a torchvision state dict.

  python -m byol_jax.export --checkpoint=<workdir | step dir | official .pkl> \
      --format=npz|torchvision --output=<file>

Only the encoder (ResNet torso) leaves the checkpoint: its params and BN state.

npz: one entry per leaf, keyed `<module path>/<leaf>` exactly as Haiku names it
(`res_net50/~/initial_conv/w`, `res_net50/~/initial_batchnorm/scale`, BN moving
statistics `res_net50/~/initial_batchnorm/~/mean_ema/average`, `.../hidden`,
`.../counter`), plus `__metadata__`, a JSON string with the model section (encoder,
width, stem, group-0 projection, ...), which keys are BN state, and the source and step.
`load_npz(path)` reads it back into Haiku params/state (`checkpointing.Pretrained`).

torchvision: a safetensors file with a `torchvision.models.resnet*` state dict:
conv weights OIHW, `bn1.{weight,bias,running_mean,running_var,num_batches_tracked}`,
`layer<g+1>.<b>.conv<k+1>/bn<k+1>`, projection shortcuts as `downsample.0/1`; the `fc`
layer is omitted (BYOL's encoder ends at the pooled representation). Both sides use
BN eps 1e-5 and the v1.5 bottleneck (stride on the 3x3), so the tensors match. Three
things differ from a stock torchvision ResNet, and the file's metadata lists those that
apply (`notes`):
  * Padding: Haiku's SAME pads stride-2 convs and the max-pool asymmetrically (more at
    the bottom/right; the max-pool pads with -inf) where PyTorch pads symmetrically,
    which shifts every stride-2 sampling grid. `tf_same_padding(model)` moves the
    padding into forward pre-hooks that pad exactly as SAME does; with it the torch
    model gives the same features (tests/test_export.py checks relative error < 1e-4).
  * ResNet-18/34 of the official code carry a projection shortcut in layer1.0
    (`layer1.0.downsample.*`): torchvision's have none, so it is added to the module.
  * Widths other than 1x, the CIFAR stem (3x3/1 conv, no max-pool), ResNet-200 and the
    test-only tiny net have no torchvision constructor: the state dict keeps
    torchvision's naming and `torchvision_model(path)` builds the matching module.
`torchvision_model(path)` (needs torch; uses torchvision when it imports and the
architecture is a stock one) returns the model in eval mode, SAME padding installed,
`fc` = Identity: inputs are float NCHW RGB in [0, 1] normalised with the ImageNet
mean/std (as torchvision's usual preprocessing), outputs the [B, D] representation.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional

import ml_collections
import numpy as np

from byol_jax import checkpointing
from byol_jax import config as config_lib
from byol_jax import networks
from byol_jax import official_import

METADATA_KEY = '__metadata__'
NPZ_FORMAT = 'byol-jax-encoder-npz'
NPZ_VERSION = 1
TORCHVISION_ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
_EMA_MODULES = ('mean_ema', 'var_ema')


# ------------------------------------------------------------ the encoder ---

def encoder_root(model_config: ml_collections.ConfigDict) -> str:
  return networks.ENCODERS[model_config.encoder].module_name


def encoder_tree(pretrained: checkpointing.Pretrained) -> tuple[dict, dict]:
  """The encoder's params and BN state (projector, predictor, classifier dropped)."""
  root = encoder_root(pretrained.config.model)

  def keep(tree):
    return {module: {leaf: np.asarray(value) for leaf, value in leaves.items()}
            for module, leaves in tree.items()
            if module == root or module.startswith(root + '/')}

  params, state = keep(pretrained.online_params), keep(pretrained.online_state)
  if not params:
    raise ValueError(f'no encoder params under {root!r} in {pretrained.source}; modules: '
                     f'{sorted(pretrained.online_params)[:5]}...')
  return params, state


def flatten(tree: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """{module: {leaf: x}} -> {'module/leaf': x}; Haiku leaf names never hold '/'."""
  return {f'{module}/{leaf}': np.asarray(value)
          for module, leaves in tree.items() for leaf, value in leaves.items()}


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  tree: dict[str, dict[str, np.ndarray]] = {}
  for key, value in flat.items():
    module, leaf = key.rsplit('/', 1)
    tree.setdefault(module, {})[leaf] = np.asarray(value)
  return tree


# -------------------------------------------------------------------- npz ---

def save_npz(path: str, pretrained: checkpointing.Pretrained) -> dict:
  """Writes the encoder as a flat npz; returns the metadata written."""
  params, state = encoder_tree(pretrained)
  flat_params, flat_state = flatten(params), flatten(state)
  metadata = dict(format=NPZ_FORMAT, version=NPZ_VERSION,
                  model=pretrained.config.model.to_dict(),
                  representation_size=networks.representation_size(
                      pretrained.config.model.encoder,
                      pretrained.config.model.width_multiplier),
                  state_keys=sorted(flat_state), source=pretrained.source,
                  step=int(pretrained.step))
  arrays = dict(flat_params, **flat_state)
  arrays[METADATA_KEY] = np.asarray(json.dumps(metadata, sort_keys=True))
  _atomic_write(path, lambda f: np.savez(f, **arrays))
  return metadata


def load_npz(path: str) -> checkpointing.Pretrained:
  """An exported npz back as Haiku params/state (encoder only) with its model config."""
  with np.load(path, allow_pickle=False) as data:
    if METADATA_KEY not in data.files:
      raise ValueError(f'{path} has no {METADATA_KEY!r} entry: not written by '
                       'byol_jax.export (--format=npz).')
    metadata = json.loads(str(data[METADATA_KEY]))
    if metadata.get('format') != NPZ_FORMAT:
      raise ValueError(f"{path}: format {metadata.get('format')!r} is not {NPZ_FORMAT!r}.")
    state_keys = set(metadata['state_keys'])
    flat = {k: data[k] for k in data.files if k != METADATA_KEY}
  config = config_lib.base_config()
  config.model = networks.model_config(**metadata['model'])
  return checkpointing.Pretrained(
      config=config,
      online_params=unflatten({k: v for k, v in flat.items() if k not in state_keys}),
      online_state=unflatten({k: v for k, v in flat.items() if k in state_keys}),
      step=int(metadata.get('step', 0)), source=os.path.abspath(path))


def _atomic_write(path: str, write) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    write(f)
  os.replace(tmp, path)


# ------------------------------------------------------------ torchvision ---

def _layout(model_config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(haiku module, torchvision prefix) for every conv and BN of the encoder."""
  spec = networks.ENCODERS[model_config.encoder]
  root = spec.module_name
  pairs = [(f'{root}/~/initial_conv', 'conv1'), (f'{root}/~/initial_batchnorm', 'bn1')]
  layers = 3 if spec.bottleneck else 2
  for g, num_blocks in enumerate(spec.blocks_per_group):
    for b in range(num_blocks):
      haiku, torch = f'{root}/~/block_group_{g}/~/block_{b}/~/', f'layer{g + 1}.{b}.'
      for k in range(layers):
        pairs += [(haiku + f'conv_{k}', torch + f'conv{k + 1}'),
                  (haiku + f'batchnorm_{k}', torch + f'bn{k + 1}')]
      pairs += [(haiku + 'shortcut_conv', torch + 'downsample.0'),
                (haiku + 'shortcut_batchnorm', torch + 'downsample.1')]
  return pairs


def torchvision_notes(model_config: ml_collections.ConfigDict) -> list[str]:
  """How this encoder differs from the stock torchvision constructor of its name."""
  notes = ['Haiku SAME padding: stride-2 convs and the max-pool pad asymmetrically; '
           'install byol_jax.export.tf_same_padding(model) (torchvision_model does) '
           'for identical features.',
           'fc is not exported (set model.fc = torch.nn.Identity()); inputs: RGB in '
           '[0, 1] normalised with the ImageNet mean/std, NCHW.']
  spec = networks.ENCODERS[model_config.encoder]
  if model_config.encoder not in TORCHVISION_ARCHS:
    notes.append(f'{model_config.encoder} has no torchvision constructor; '
                 'byol_jax.export.torchvision_model builds the module (torchvision naming).')
  if model_config.width_multiplier != 1:
    notes.append(f'width multiplier {model_config.width_multiplier} (all channels, the '
                 'stem included) has no torchvision constructor (wide_resnet*_2 widens only '
                 'the bottleneck); byol_jax.export.torchvision_model builds it.')
  if model_config.stem == 'cifar':
    notes.append('CIFAR stem: conv1 is 3x3 stride 1 (padding 1) and there is no max-pool '
                 '(model.maxpool = torch.nn.Identity()).')
  if not spec.bottleneck and model_config.group0_projection:
    notes.append('official group-0 projection: layer1.0.downsample = Sequential('
                 'Conv2d(64w, 64w, 1, bias=False), BatchNorm2d(64w)) must be added to a '
                 'torchvision ResNet-18/34 before load_state_dict.')
  return notes


def torchvision_state_dict(pretrained: checkpointing.Pretrained) -> dict[str, np.ndarray]:
  """The encoder as a torchvision-named state dict of numpy arrays (no fc)."""
  params, state = encoder_tree(pretrained)
  out = {}
  for haiku, torch in _layout(pretrained.config.model):
    if haiku not in params:
      continue  # e.g. no group-0 shortcut
    if torch.endswith(('conv1', 'conv2', 'conv3', 'downsample.0')):
      out[f'{torch}.weight'] = np.ascontiguousarray(
          np.transpose(params[haiku]['w'], (3, 2, 0, 1)), np.float32)  # HWIO -> OIHW
      continue
    mean, var = state[f'{haiku}/~/mean_ema'], state[f'{haiku}/~/var_ema']
    out[f'{torch}.weight'] = params[haiku]['scale'].reshape(-1).astype(np.float32)
    out[f'{torch}.bias'] = params[haiku]['offset'].reshape(-1).astype(np.float32)
    out[f'{torch}.running_mean'] = mean['average'].reshape(-1).astype(np.float32)
    out[f'{torch}.running_var'] = var['average'].reshape(-1).astype(np.float32)
    out[f'{torch}.num_batches_tracked'] = np.asarray(mean['counter'], np.int64).reshape(())
  return out


def save_torchvision(path: str, pretrained: checkpointing.Pretrained) -> dict[str, str]:
  """Writes the safetensors state dict; returns its (string) metadata."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  model = pretrained.config.model
  metadata = {
      'format': 'byol-jax-torchvision', 'version': '1',
      'architecture': model.encoder, 'model': json.dumps(model.to_dict(), sort_keys=True),
      'torchvision_constructor': (f'torchvision.models.{model.encoder}'
                                  if model.encoder in TORCHVISION_ARCHS and
                                  model.width_multiplier == 1 and model.stem == 'imagenet'
                                  else 'none'),
      'padding': 'tf_same', 'bn_eps': str(model.bn_eps),
      'notes': json.dumps(torchvision_notes(model)),
      'source': pretrained.source, 'step': str(pretrained.step)}
  tensors = torchvision_state_dict(pretrained)
  _atomic_write(path, lambda f: f.write(safetensors_numpy.save(tensors, metadata=metadata)))
  return metadata


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF/Haiku SAME padding (before, after) of one spatial dim."""
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def tf_same_padding(model):
  """Makes every conv and max-pool of a torch model pad as Haiku's SAME does (in place)."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  def pair(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

  def hook(kernel, stride, value):
    def pad(module, inputs):
      del module
      x = inputs[0]
      top, bottom = _same_pads(x.shape[-2], kernel[0], stride[0])
      left, right = _same_pads(x.shape[-1], kernel[1], stride[1])
      return (F.pad(x, (left, right, top, bottom), value=value),) + tuple(inputs[1:])
    return pad

  for module in model.modules():
    if isinstance(module, nn.Conv2d):
      if pair(module.dilation) != (1, 1) or module.groups != 1:
        raise ValueError('tf_same_padding handles plain convs only (no dilation/groups).')
      module.padding = (0, 0)
      module.register_forward_pre_hook(
          hook(pair(module.kernel_size), pair(module.stride), 0.))
    elif isinstance(module, nn.MaxPool2d):
      module.padding = 0
      module.register_forward_pre_hook(
          hook(pair(module.kernel_size), pair(module.stride), float('-inf')))
  return model


def build_torch_resnet(model_config: ml_collections.ConfigDict, use_torchvision: bool = True):
  """An untrained torch ResNet with torchvision naming for `model_config`, fc = Identity.

  Stock architectures come from torchvision when it imports (and `use_torchvision`);
  everything else (and everything, without torchvision) from an equivalent module here.
  """
  from torch import nn  # pylint: disable=g-import-not-at-top
  spec = networks.ENCODERS[model_config.encoder]
  width = model_config.width_multiplier
  stock = (model_config.encoder in TORCHVISION_ARCHS and width == 1 and
           model_config.stem == 'imagenet')
  model = None
  if stock and use_torchvision:
    try:
      import torchvision  # pylint: disable=g-import-not-at-top
      model = getattr(torchvision.models, model_config.encoder)(weights=None)
    except Exception:  # noqa: BLE001 - a broken torchvision install: use ours
      model = None
  if model is None:
    model = _torch_resnet_module(spec, width, model_config.stem)
  model.fc = nn.Identity()
  if not spec.bottleneck and model_config.group0_projection:
    channels = networks.scaled(spec.channels_per_group[0], width)
    model.layer1[0].downsample = nn.Sequential(
        nn.Conv2d(networks.scaled(64, width), channels, 1, bias=False),
        nn.BatchNorm2d(channels, eps=model_config.bn_eps))
  for module in model.modules():
    if isinstance(module, nn.BatchNorm2d):
      module.eps = model_config.bn_eps
  return model


def _torch_resnet_module(spec: networks.EncoderSpec, width: float, stem: str):
  """A torchvision-layout ResNet v1(.5) of any width and stem, written here."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  class Block(nn.Module):
    """torchvision's BasicBlock / Bottleneck attribute names and forward."""

    def __init__(self, cin, channels, stride, projection, bottleneck):
      super().__init__()
      inner = max(1, channels // 4) if bottleneck else channels
      shapes = ([(cin, inner, 1, 1), (inner, inner, 3, stride), (inner, channels, 1, 1)]
                if bottleneck else [(cin, channels, 3, stride), (channels, channels, 3, 1)])
      self.num_layers = len(shapes)
      for k, (i, o, kernel, s) in enumerate(shapes, start=1):
        setattr(self, f'conv{k}', nn.Conv2d(i, o, kernel, s, kernel // 2, bias=False))
        setattr(self, f'bn{k}', nn.BatchNorm2d(o))
      self.relu = nn.ReLU(inplace=True)
      self.downsample = (nn.Sequential(nn.Conv2d(cin, channels, 1, stride, bias=False),
                                       nn.BatchNorm2d(channels)) if projection else None)

    def forward(self, x):
      out = x
      for k in range(1, self.num_layers + 1):
        out = getattr(self, f'bn{k}')(getattr(self, f'conv{k}')(out))
        if k < self.num_layers:
          out = self.relu(out)
      identity = x if self.downsample is None else self.downsample(x)
      return self.relu(out + identity)

  class ResNet(nn.Module):

    def __init__(self):
      super().__init__()
      stem_channels = networks.scaled(64, width)
      kernel, stride = (7, 2) if stem == 'imagenet' else (3, 1)
      self.conv1 = nn.Conv2d(3, stem_channels, kernel, stride, kernel // 2, bias=False)
      self.bn1 = nn.BatchNorm2d(stem_channels)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == 'imagenet' else nn.Identity()
      cin = stem_channels
      for g, (num_blocks, channels) in enumerate(zip(spec.blocks_per_group,
                                                     spec.channels_per_group)):
        channels = networks.scaled(channels, width)
        blocks = []
        for b in range(num_blocks):
          stride = 2 if (g > 0 and b == 0) else 1
          blocks.append(Block(cin, channels, stride, b == 0 and (g > 0 or spec.bottleneck),
                              spec.bottleneck))
          cin = channels
        setattr(self, f'layer{g + 1}', nn.Sequential(*blocks))
      self.avgpool = nn.AdaptiveAvgPool2d(1)
      self.fc = nn.Identity()

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      for g in range(1, 5):
        x = getattr(self, f'layer{g}')(x)
      return self.fc(self.avgpool(x).flatten(1))

  return ResNet()


def torchvision_model(state_dict_path: str, use_torchvision: bool = True):
  """The exported encoder as a torch module giving the Haiku encoder's features.

  Eval mode, SAME padding installed (`tf_same_padding`), fc = Identity. Input: float
  [B, 3, H, W] RGB in [0, 1] normalised with `networks.IMAGENET_MEAN/STD`.
  """
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  with safe_open(state_dict_path, framework='pt') as f:
    metadata = f.metadata() or {}
  if 'model' not in metadata:
    raise ValueError(f'{state_dict_path} has no byol-jax metadata: export it with '
                     'python -m byol_jax.export --format=torchvision.')
  model_config = networks.model_config(**json.loads(metadata['model']))
  model = build_torch_resnet(model_config, use_torchvision=use_torchvision)
  model.load_state_dict(load_file(state_dict_path), strict=True)
  tf_same_padding(model)
  return model.eval()


# -------------------------------------------------------------------- CLI ---

def export(checkpoint: str, fmt: str, output: str) -> dict:
  """Loads any pretrained source and writes the encoder in `fmt`; returns the metadata."""
  pretrained = official_import.load_checkpoint(checkpoint)
  if fmt == 'npz':
    return save_npz(output, pretrained)
  if fmt == 'torchvision':
    return save_torchvision(output, pretrained)
  raise ValueError(f"--format={fmt!r}: use 'npz' or 'torchvision'.")


def run(argv: Optional[list[str]] = None) -> None:
  """Console entry point (`byol-jax-export`)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('checkpoint', None, 'byol-jax workdir, step dir, official .pkl or '
                      'exported .npz.', required=True)
  flags.DEFINE_enum('format', 'npz', ['npz', 'torchvision'], 'Output format.')
  flags.DEFINE_string('output', None, 'Output file (.npz or .safetensors).', required=True)

  def main(args):
    del args
    values = flags.FLAGS
    metadata = export(values.checkpoint, values.format, values.output)
    print(f'wrote {values.output} ({values.format}) from {values.checkpoint}')
    notes = metadata.get('notes')
    for note in json.loads(notes) if isinstance(notes, str) else []:
      print(f'note: {note}')

  app.run(main, argv=argv)


if __name__ == '__main__':
  run()
