"""Official DeepMind checkpoint import: a file built in the official layout round-trips,
old numpy / dill variants load, and anything outside the format is refused.

`synthetic_pretrained` (shared with the other evaluation tests) builds a network's param
and BN-state trees from their shapes in numpy: no compiled init, so it costs nothing.
"""

import io
import os
import pickle
import sys
import types
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol_jax import checkpointing
from byol_jax import config as config_lib
from byol_jax import export
from byol_jax import networks
from byol_jax import official_import


def tiny_model(**overrides):
  return networks.model_config(**dict(
      dict(encoder='tiny', width_multiplier=1., stem='cifar', projector_hidden_size=16,
           predictor_hidden_size=16, projection_size=8), **overrides))


def synthetic_pretrained(model_config, image_size: int = 16, seed: int = 0,
                         num_classes: int = 10, encoder_only: bool = False
                         ) -> checkpointing.Pretrained:
  """Random params (std 1/sqrt(fan_in)), BN affine and moving statistics near identity."""
  network = (networks.make_encoder_network(model_config) if encoder_only else
             networks.make_byol_network(model_config, num_classes))
  images = jnp.zeros((2, image_size, image_size, 3), jnp.uint8)
  shapes = jax.eval_shape(lambda: network.init(jax.random.PRNGKey(0), images,
                                               is_training=True))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    names = [getattr(k, 'key', '') for k in path]
    shape, name, module = leaf.shape, names[-1], names[-2]
    if name == 'w':
      return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    if name == 'scale':
      return (1. + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    if name in ('offset', 'b'):
      return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name == 'counter':
      return np.asarray(7, np.int32)
    if module.endswith('var_ema'):
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)

  params, state = jax.tree_util.tree_map_with_path(fill, shapes)
  config = config_lib.base_config()
  config.model = model_config
  return checkpointing.Pretrained(config=config, online_params=params, online_state=state,
                                  step=1234, source='synthetic')


def assert_trees_equal(a, b):
  assert sorted(a) == sorted(b)
  for module in a:
    assert sorted(a[module]) == sorted(b[module]), module
    for leaf in a[module]:
      np.testing.assert_array_equal(np.asarray(a[module][leaf]), np.asarray(b[module][leaf]))


# ------------------------------------------------ a file in the official layout ---

class _ByolExperimentState(NamedTuple):
  online_params: Any
  target_params: Any
  online_state: Any
  target_state: Any
  opt_state: Any


class AddWeightDecayState(NamedTuple):
  pass


class ScaleByLarsState(NamedTuple):
  mu: Any


@pytest.fixture
def official_classes(monkeypatch):
  """Our stand-ins under the official module names, so pickle writes those names."""
  modules = {name: types.ModuleType(name) for name in
             ('byol', 'byol.byol_experiment', 'byol.utils', 'byol.utils.optimizers')}
  placed = {'byol.byol_experiment': [_ByolExperimentState],
            'byol.utils.optimizers': [AddWeightDecayState, ScaleByLarsState]}
  for module, classes in placed.items():
    for cls in classes:
      monkeypatch.setattr(cls, '__module__', module)
      setattr(modules[module], cls.__qualname__, cls)
  for name, module in modules.items():
    monkeypatch.setitem(sys.modules, name, module)
  yield


def official_content(pretrained):
  """The official checkpoint dict: FlatMapping trees, LARS opt state, jax rng."""
  immutable = hk.data_structures.to_immutable_dict
  params, state = immutable(pretrained.online_params), immutable(pretrained.online_state)
  target = immutable(jax.tree.map(lambda x: x + 1, pretrained.online_params))
  experiment_state = _ByolExperimentState(
      online_params=params, target_params=target, online_state=state,
      target_state=state,
      opt_state=(AddWeightDecayState(),
                 ScaleByLarsState(mu=immutable(jax.tree.map(np.zeros_like,
                                                            pretrained.online_params))),
                 optax.EmptyState()))
  return {'experiment_state': experiment_state, 'step': pretrained.step,
          'rng': jax.random.PRNGKey(3)}


def test_official_layout_round_trip(official_classes, tmp_path):
  original = synthetic_pretrained(tiny_model())
  data = pickle.dumps(official_content(original), protocol=2)
  for name in (b'byol.byol_experiment\n_ByolExperimentState', b'FlatMapping',
               b'byol.utils.optimizers\nScaleByLarsState', b'EmptyState',
               b'jax._src.array\n_reconstruct_array'):
    assert name in data  # the stream names the official classes
  path = tmp_path / 'pretrain.pkl'
  path.write_bytes(data)
  loaded = official_import.load_checkpoint(str(path))
  assert loaded.step == 1234
  assert_trees_equal(loaded.online_params, original.online_params)
  assert_trees_equal(loaded.online_state, original.online_state)
  model = loaded.config.model
  assert (model.encoder, model.width_multiplier, model.stem, model.group0_projection) == (
      'tiny', 1., 'cifar', True)
  assert (model.projector_hidden_size, model.projection_size,
          model.predictor_hidden_size) == (16, 8, 16)
  # usable downstream: same features, and exportable.
  encoder = networks.make_encoder_network(model)
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  ours, _ = encoder.apply(original.online_params, original.online_state, images, False)
  theirs, _ = encoder.apply(loaded.online_params, loaded.online_state, images, False)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  export.export(str(path), 'npz', str(tmp_path / 'encoder.npz'))
  assert_trees_equal(export.load_npz(str(tmp_path / 'encoder.npz')).online_params,
                     export.encoder_tree(original)[0])


def test_old_numpy_paths_and_dill_namedtuples(official_classes, monkeypatch):
  """2020 files: numpy.core paths, dill's by-value namedtuples, no 'average' in BN EMA."""
  original = synthetic_pretrained(tiny_model())
  content = official_content(original)

  def _create_namedtuple(name, fieldnames, modulename, defaults=None):
    raise AssertionError('only its name is written')

  _create_namedtuple.__module__ = 'dill._dill'
  _create_namedtuple.__qualname__ = '_create_namedtuple'
  for name in ('dill', 'dill._dill'):
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
  sys.modules['dill._dill']._create_namedtuple = _create_namedtuple

  class DillPickler(pickle.Pickler):
    def reducer_override(self, obj):
      if obj is _ByolExperimentState:  # dill writes namedtuple classes by value
        return (_create_namedtuple, ('_ByolExperimentState', obj._fields,
                                     'byol.byol_experiment'))
      return NotImplemented

  buffer = io.BytesIO()
  DillPickler(buffer, protocol=2).dump(content)
  data = buffer.getvalue().replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
  assert b'dill._dill\n_create_namedtuple' in data and b'numpy.core.multiarray' in data
  loaded = official_import.from_official_content(official_import.safe_loads(data), 'x')
  assert_trees_equal(loaded.online_params, original.online_params)

  old_state = {m: {k: v for k, v in leaves.items() if k != 'average'}
               for m, leaves in original.online_state.items()}
  rebuilt = official_import._complete_ema_state(official_import._as_tree(old_state, 's'))
  for module, leaves in original.online_state.items():
    expected = leaves['hidden'] / (1 - 0.9 ** 7)
    np.testing.assert_allclose(rebuilt[module]['average'], expected, rtol=1e-6)


class _Exploit:
  def __reduce__(self):
    return (os.system, ('touch pwned_by_pickle',))


def test_refuses_globals_outside_the_format(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(official_import.ForbiddenGlobalError, match='system'):
    official_import.safe_loads(pickle.dumps({'experiment_state': _Exploit()}, protocol=2))
  assert not (tmp_path / 'pwned_by_pickle').exists()
  with pytest.raises(official_import.ForbiddenGlobalError, match='builtins.eval'):
    official_import.safe_loads(pickle.dumps(eval, protocol=2))
  with pytest.raises(official_import.ForbiddenGlobalError, match='object'):
    official_import.safe_loads(pickle.dumps(np.array([None, 1], dtype=object), protocol=2))
  with pytest.raises(official_import.OfficialFormatError, match='experiment_state'):
    official_import.from_official_content({'step': 1}, 'x.pkl')


def test_infers_released_architectures():
  """ResNet-50 1x and ResNet-200 2x (the released files) from shapes alone."""
  for encoder, width in (('resnet50', 1.), ('resnet200', 2.), ('resnet18', 1.)):
    model = networks.model_config(encoder=encoder, width_multiplier=width)
    shapes = jax.eval_shape(lambda m=model: networks.make_byol_network(m, 1000).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.uint8), is_training=True))[0]
    zeros = jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)
    inferred = official_import.infer_model_config(zeros)
    assert (inferred.encoder, inferred.width_multiplier, inferred.stem,
            inferred.projector_hidden_size) == (encoder, width, 'imagenet', 4096)
