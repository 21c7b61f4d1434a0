"""Reads the official DeepMind BYOL checkpoints without the official code, safely.

The released files (`pretrain_res50x1.pkl`, `pretrain_res200x2.pkl`, the ablation
files; spec 7.5 and OFFICIAL_PARAMS.md) are dill pickles (protocol 2) of
`{'experiment_state': _ByolExperimentState(online_params, target_params, online_state,
target_state, opt_state), 'step': int, 'rng': uint32[2]}`. Their streams name classes
of the official package (`byol.byol_experiment`, `byol.utils.optimizers`), of optax
and Haiku (`FlatMapping` and relatives, 2020 paths), numpy (old `numpy.core` and new
`numpy._core` paths) and jax (a pickled jax array), and dill's own namedtuple rebuilder.

A pickle can run any code it names, so `RestrictedUnpickler` resolves only that fixed
list of names, each to a container or constructor of ours that builds nothing but
arrays, dicts, tuples and the state tuples below; every other global is refused with
`ForbiddenGlobalError` naming it. Nothing in the stream is imported.

`load_official(path)` maps a file onto byol-jax's `Pretrained` (online params and BN
state as nested dicts of float32 numpy arrays, the model config inferred from the
parameter shapes), so linear evaluation, fine-tuning and export take it like one of our
own checkpoints; `load_checkpoint(path)` accepts any of the three sources.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import keyword
import os
import pickle
from typing import Any, BinaryIO, Mapping, NamedTuple, Union

import ml_collections
import numpy as np

from byol_jax import checkpointing
from byol_jax import config as config_lib
from byol_jax import networks

BN_EMA_DECAY = 0.9  # official bn_config decay, used only to rebuild a missing 'average'


class ForbiddenGlobalError(pickle.UnpicklingError):
  """The pickle names a global outside the official checkpoint format."""


class OfficialFormatError(ValueError):
  """The file unpickled, but is not laid out like an official BYOL checkpoint."""


# ------------------------------------------------------------ containers ---

class ExperimentState(NamedTuple):
  """Stand-in for `byol.byol_experiment._ByolExperimentState`."""
  online_params: Any
  target_params: Any
  online_state: Any
  target_state: Any
  opt_state: Any


class AddWeightDecayState(NamedTuple):
  """Stand-in for `byol.utils.optimizers.AddWeightDecayState` (no fields)."""


class ScaleByLarsState(NamedTuple):
  """Stand-in for `byol.utils.optimizers.ScaleByLarsState` (the momentum tree)."""
  mu: Any


class EmptyState(NamedTuple):
  """Stand-in for optax's `EmptyState`."""


class UnknownState(tuple):
  """Any other `*State` tuple of the official optimizer module, kept as a tuple."""

  def __new__(cls, *fields):
    return super().__new__(cls, fields)


def _flat_mapping(*args, **kwargs) -> dict:
  """Haiku `FlatMapping(mapping)` / `frozendict(mapping)` (all vintages) -> dict."""
  return dict(*args, **kwargs)


def _reconstruct_ndarray(subtype, shape, dtype) -> np.ndarray:
  """numpy's `_reconstruct` restricted to plain ndarrays (BUILD then fills it)."""
  if subtype is not np.ndarray:
    raise ForbiddenGlobalError(f'refusing to rebuild an array of type {subtype!r}; '
                               'only numpy.ndarray is accepted.')
  return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_dtype(*args) -> np.dtype:
  dtype = np.dtype(*args)
  if dtype.hasobject:
    raise ForbiddenGlobalError(f'refusing object dtype {dtype!r} in a checkpoint.')
  return dtype


def _numpy_scalar(dtype: np.dtype, data: bytes = b'') -> np.generic:
  if dtype.hasobject:
    raise ForbiddenGlobalError(f'refusing an object scalar of dtype {dtype!r}.')
  return np.frombuffer(data, dtype=dtype, count=1)[0]


def _jax_array(fun, args, arr_state, aval_state) -> np.ndarray:
  """`jax._src.array._reconstruct_array`: a host numpy array is all we need."""
  del aval_state
  if fun is not _reconstruct_ndarray:
    raise ForbiddenGlobalError('a pickled jax array must wrap numpy _reconstruct.')
  value = fun(*args)
  value.__setstate__(arr_state)
  return value


def _codecs_encode(text: str, encoding: str = 'utf-8') -> bytes:
  """Protocol-2 pickles written by Python 3 spell `bytes` as `_codecs.encode(s, 'latin1')`."""
  if encoding not in ('latin1', 'latin-1'):
    raise ForbiddenGlobalError(f'_codecs.encode with encoding {encoding!r} is not accepted.')
  return text.encode('latin1')


_KNOWN_STATES = {
    '_ByolExperimentState': ExperimentState,
    'AddWeightDecayState': AddWeightDecayState,
    'ScaleByLarsState': ScaleByLarsState,
    'EmptyState': EmptyState,
}
_OFFICIAL_MODULES = ('byol.byol_experiment', 'byol.utils.optimizers')


def _create_namedtuple(name: str, fieldnames, modulename: str = '', defaults=None):
  """dill's `_create_namedtuple`: known official names map to our stand-ins."""
  del defaults
  if name in _KNOWN_STATES:
    return _KNOWN_STATES[name]
  fields = tuple(fieldnames)
  if not all(isinstance(f, str) and f.isidentifier() and not keyword.iskeyword(f)
             for f in fields) or not str(name).isidentifier():
    raise ForbiddenGlobalError(f'bad namedtuple {name!r} from {modulename!r}: {fields!r}.')
  return collections.namedtuple(name, fields)


def _safe_globals() -> dict[tuple[str, str], Any]:
  table: dict[tuple[str, str], Any] = {}
  for numpy_core in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    table[(numpy_core, '_reconstruct')] = _reconstruct_ndarray
    table[(numpy_core, 'scalar')] = _numpy_scalar
  table[('numpy', 'ndarray')] = np.ndarray
  table[('numpy', 'dtype')] = _numpy_dtype
  table[('_codecs', 'encode')] = _codecs_encode
  table[('collections', 'OrderedDict')] = _flat_mapping
  for module in ('haiku._src.data_structures', 'haiku.data_structures',
                 'haiku._src.base', 'haiku'):
    for name in ('FlatMapping', 'FlatMap', 'frozendict', 'to_immutable_dict',
                 'to_haiku_dict', 'to_dict', 'to_mutable_dict'):
      table[(module, name)] = _flat_mapping
  for module in ('jax._src.array', 'jax.Array'):
    table[(module, '_reconstruct_array')] = _jax_array
  for module in ('dill._dill', 'dill.dill', 'dill'):
    table[(module, '_create_namedtuple')] = _create_namedtuple
  for module in _OFFICIAL_MODULES:
    for name, cls in _KNOWN_STATES.items():
      table[(module, name)] = cls
  return table


_SAFE_GLOBALS = _safe_globals()


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the names of the official checkpoint format."""

  def find_class(self, module: str, name: str) -> Any:
    # Python 2 names (protocol <= 2 streams), mapped as pickle's own fix_imports does.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
      module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    found = _SAFE_GLOBALS.get((module, name))
    if found is not None:
      return found
    if module.startswith('optax') and name == 'EmptyState':
      return EmptyState  # optax moved it (transform -> base) over the years
    if module == 'byol.utils.optimizers' and name.endswith('State'):
      return UnknownState
    raise ForbiddenGlobalError(
        f'refusing to load global {module}.{name}: an official BYOL checkpoint holds only '
        'numpy arrays, dicts, tuples and the byol/optax/Haiku state containers, and a '
        'pickle that names anything else could run code. If this file is trusted and of '
        'a newer layout, convert it to plain dicts of numpy arrays first.')

  def persistent_load(self, pid):
    raise ForbiddenGlobalError(f'refusing persistent id {pid!r} in a checkpoint.')


def safe_load(file: Union[str, os.PathLike, BinaryIO]) -> Any:
  """Unpickles `file` (path or binary file object) with `RestrictedUnpickler`."""
  if isinstance(file, (str, os.PathLike)):
    with open(file, 'rb') as f:
      return RestrictedUnpickler(f).load()
  return RestrictedUnpickler(file).load()


def safe_loads(data: bytes) -> Any:
  return RestrictedUnpickler(io.BytesIO(data)).load()


# ---------------------------------------------------------------- mapping ---

def _as_tree(tree: Any, where: str) -> dict:
  """{module: {leaf: array}} as plain dicts of float32/int32 numpy arrays."""
  if not isinstance(tree, Mapping):
    raise OfficialFormatError(f'{where} is a {type(tree).__name__}, expected a mapping '
                              '{module path: {leaf name: array}}.')
  out = {}
  for module, leaves in tree.items():
    if not isinstance(leaves, Mapping):
      raise OfficialFormatError(f'{where}[{module!r}] is a {type(leaves).__name__}, '
                                'expected {leaf name: array}.')
    out[str(module)] = {}
    for leaf, value in leaves.items():
      value = np.asarray(value)
      if value.dtype.kind == 'f':
        value = value.astype(np.float32)
      elif value.dtype.kind in 'iu':
        value = value.astype(np.int32)
      else:
        raise OfficialFormatError(f'{where}[{module!r}][{leaf!r}] has dtype {value.dtype}.')
      out[str(module)][str(leaf)] = value
  return out


def _complete_ema_state(state: dict) -> dict:
  """Adds `average` = hidden / (1 - decay^counter) where an old file lacks it."""
  for module, leaves in state.items():
    if 'average' not in leaves and {'hidden', 'counter'} <= set(leaves):
      counter = float(leaves['counter'])
      debias = 1. - BN_EMA_DECAY ** counter if counter > 0 else 1.
      leaves['average'] = (leaves['hidden'] / debias).astype(np.float32)
  return state


def _encoder_name(params: Mapping[str, Any]) -> str:
  roots = {module.split('/~/')[0] for module in params}
  found = [name for name, spec in networks.ENCODERS.items() if spec.module_name in roots]
  if len(found) != 1:
    raise OfficialFormatError(
        f'cannot tell the encoder from the top-level modules {sorted(roots)}; expected '
        f'exactly one of {sorted(s.module_name for s in networks.ENCODERS.values())}.')
  return found[0]


def infer_model_config(params: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The model section (encoder, width, stem, group-0 projection, MLP sizes) from shapes."""
  encoder = _encoder_name(params)
  spec = networks.ENCODERS[encoder]
  root = spec.module_name
  stem_w = np.shape(params[f'{root}/~/initial_conv']['w'])
  width = stem_w[-1] / 64.
  stem = {7: 'imagenet', 3: 'cifar'}.get(stem_w[0])
  if stem is None:
    raise OfficialFormatError(f'stem kernel {stem_w} is neither 7x7 (imagenet) nor 3x3 (cifar).')
  last = len(spec.blocks_per_group) - 1
  last_block = (f'{root}/~/block_group_{last}/~/block_{spec.blocks_per_group[-1] - 1}'
                f'/~/conv_{2 if spec.bottleneck else 1}')
  out_channels = np.shape(params[last_block]['w'])[-1]
  if networks.scaled(spec.channels_per_group[-1], width) != out_channels:
    raise OfficialFormatError(
        f'stem width {stem_w[-1]} and last-stage width {out_channels} disagree for '
        f'{encoder}: not a width multiple of a known ResNet.')
  overrides = dict(
      encoder=encoder, width_multiplier=float(width), stem=stem,
      group0_projection=f'{root}/~/block_group_0/~/block_0/~/shortcut_conv' in params)
  if 'projector/linear' in params:
    overrides['projector_hidden_size'] = int(np.shape(params['projector/linear']['w'])[1])
    overrides['projection_size'] = int(np.shape(params['projector/linear_1']['w'])[1])
  if 'predictor/linear' in params:
    overrides['predictor_hidden_size'] = int(np.shape(params['predictor/linear']['w'])[1])
  return networks.model_config(**overrides)


def _field(obj: Any, name: str, where: str) -> Any:
  if isinstance(obj, Mapping) and name in obj:
    return obj[name]
  if hasattr(obj, name):
    return getattr(obj, name)
  raise OfficialFormatError(f'{where} has no {name!r}: not an official BYOL checkpoint.')


def from_official_content(content: Any, source: str) -> checkpointing.Pretrained:
  """Maps an unpickled official checkpoint dict onto `Pretrained`."""
  if not isinstance(content, Mapping) or 'experiment_state' not in content:
    keys = sorted(content) if isinstance(content, Mapping) else type(content).__name__
    raise OfficialFormatError(f'{source}: expected a dict with experiment_state, step and '
                              f'rng (spec 7.5), got {keys}.')
  state = content['experiment_state']
  params = _as_tree(_field(state, 'online_params', 'experiment_state'), 'online_params')
  bn_state = _complete_ema_state(
      _as_tree(_field(state, 'online_state', 'experiment_state'), 'online_state'))
  config = config_lib.base_config()
  config.model = infer_model_config(params)
  return checkpointing.Pretrained(config=config, online_params=params,
                                  online_state=bn_state,
                                  step=int(np.asarray(content.get('step', 0))),
                                  source=source)


def load_official(path: str) -> checkpointing.Pretrained:
  """An official `.pkl` checkpoint as byol-jax's `Pretrained` (online network only)."""
  return from_official_content(safe_load(path), os.path.abspath(path))


def load_checkpoint(path: str) -> checkpointing.Pretrained:
  """Any pretrained source: a byol-jax workdir or step dir, an official `.pkl`, or an
  exported `.npz` (encoder only)."""
  if os.path.isfile(path) and path.endswith('.pkl'):
    return load_official(path)
  if os.path.isfile(path) and path.endswith('.npz'):
    from byol_jax import export  # pylint: disable=g-import-not-at-top (export imports us)
    return export.load_npz(path)
  if os.path.isfile(path):
    raise ValueError(f'{path!r}: unknown checkpoint file type; give a byol-jax workdir or '
                     'step directory, an official .pkl or an exported .npz.')
  return checkpointing.load_pretrained(path)

