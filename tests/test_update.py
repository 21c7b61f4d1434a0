"""The pmapped BYOL update: device-count invariance, determinism, EMA, accumulation."""

import functools

import haiku as hk
import jax
import numpy as np
import pytest

from byol_jax import update
from conftest import random_batch, shard, tiny_config

IMAGE = 16
NUM_TRAIN = 80


class Runner:
  """One compiled step per (config, devices); runs from a fresh init."""

  def __init__(self, config, num_devices):
    self.config = config
    settings = update.settings_from_config(config, NUM_TRAIN, num_classes=10)
    self.network, self.optimizer, update_fn = update.build(config, settings)
    self.devices = jax.local_devices()[:num_devices]
    self.step = jax.pmap(update_fn, axis_name=update.AXIS_NAME, devices=self.devices)

  def init(self, seed=None):
    config = self.config
    if seed is not None:
      config = config.copy_and_resolve_references()
      config.seed = seed
    return update.init_state(config, self.network, self.optimizer, IMAGE)

  def run(self, batches, state=None):
    state = update.replicate(state or self.init(), self.devices)
    metrics = []
    for batch in batches:
      state, m = self.step(state, shard(batch, len(self.devices)))
      metrics.append(jax.tree.map(lambda x: float(x[0]), m))
    return jax.device_get(state), metrics


@functools.lru_cache(maxsize=None)
def runner(num_devices, **overrides):
  config = tiny_config(IMAGE)
  for key, value in overrides.items():
    section, name = key.split('__')
    config[section][name] = value
  return Runner(config, num_devices)


@pytest.fixture(scope='module')
def batches():
  return [random_batch(8, IMAGE, seed=s) for s in range(3)]


@pytest.fixture(scope='module')
def one_device_run(batches):
  return runner(1).run(batches)


def _flat(tree):
  return {f'{m}/{n}': np.asarray(v) for m, n, v in hk.data_structures.traverse(tree)}


def test_two_devices_equal_one_device_for_the_same_global_batch(one_device_run, batches):
  """Proves cross-replica BN, gradient pmean and device-independent augmentation keys."""
  if jax.local_device_count() < 2:
    pytest.skip('needs 2 devices: XLA_FLAGS=--xla_force_host_platform_device_count=2')
  state1, metrics1 = one_device_run
  state2, metrics2 = runner(2).run(batches)
  for a, b in zip(metrics1, metrics2):
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=0, atol=4e-6, err_msg=key)
  for name in ('online_params', 'target_params'):
    p1, p2 = _flat(getattr(state1, name)), _flat(getattr(state2, name))
    for key in p1:
      assert np.array_equal(p2[key][0], p2[key][1]), f'{key} differs across devices'
      # The official code's own 1- vs 2-device gap: ~1e-7 on LARS-updated weights,
      # ~2e-6 on BN/bias params.
      atol = 2e-6 if ('norm' in key or key.endswith('/b')) else 5e-7
      np.testing.assert_allclose(p2[key][0], p1[key][0], rtol=0, atol=atol,
                                 err_msg=f'{name} {key}')
  s1, s2 = _flat(state1.online_state), _flat(state2.online_state)
  for key in s1:
    np.testing.assert_allclose(s2[key][0], s1[key][0], rtol=0, atol=7e-6, err_msg=key)
  assert int(state2.step[0]) == 3


def test_same_seed_is_bit_identical(one_device_run, batches):
  state_a, _ = one_device_run
  state_b, _ = runner(1).run(batches)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    assert np.array_equal(a, b)
  state_c, _ = runner(1).run(batches[:1], state=runner(1).init(seed=1))
  assert not np.array_equal(_flat(state_c.online_params)['classifier/w'],
                            _flat(state_a.online_params)['classifier/w'])


def test_target_is_ema_of_new_online_and_gets_no_gradient(batches):
  state0 = runner(1).init()
  # lr is 0 at step 0 (warmup starts at 0), so look at the second step.
  state1, _ = runner(1).run(batches[:1], state0)
  state1 = jax.tree.map(lambda x: np.asarray(x[0]), state1)
  state2, metrics = runner(1).run(batches[1:2], state1)
  state2 = jax.tree.map(lambda x: np.asarray(x[0]), state2)
  tau = metrics[0]['tau']
  assert 0.996 < tau < 1.
  online1, target1 = _flat(state1.online_params), _flat(state1.target_params)
  online2, target2 = _flat(state2.online_params), _flat(state2.target_params)
  for key in target1:
    # Exactly the EMA towards the *new* online params: no gradient step on the target.
    expected = target1[key] + (1 - tau) * (online2[key] - target1[key])
    np.testing.assert_allclose(target2[key], expected, rtol=1e-6, atol=1e-9, err_msg=key)
  moved = [k for k in online1 if not np.array_equal(online1[k], online2[k])]
  assert len(moved) == len(online1)  # every online param trained (classifier included)
  # The paper's initialisation: the target starts as a copy of the online network.
  online0, target0 = _flat(state0.online_params), _flat(state0.target_params)
  for key in online0:
    np.testing.assert_array_equal(online0[key], target0[key])
  # BN statistics were updated twice per step (one call per view), online and target;
  # the target never runs its (unused) predictor.
  for tree, skipped in ((state2.online_state, ()), (state2.target_state, ('predictor',))):
    counters = {k: int(v) for k, v in _flat(tree).items() if k.endswith('counter')}
    assert counters == {k: 0 if k.startswith(skipped) else 4 for k in counters}
  assert int(state2.step) == 2


def test_official_independent_target_init():
  state = runner(1, model__target_init='independent').init()
  assert not np.array_equal(_flat(state.online_params)['classifier/w'],
                            _flat(state.target_params)['classifier/w'])


def test_accumulation_applies_optimizer_and_ema_once_per_call(batches):
  """Two identical micro-batches give exactly the gradient of one of them."""
  half = {k: v[:4] for k, v in batches[0].items()}
  doubled = {k: np.concatenate([v, v]) for k, v in half.items()}
  plain = runner(1, augmentation__enabled=False)
  accumulated = runner(1, augmentation__enabled=False, training__accumulation_steps=2)
  state_p, metrics_p = plain.run([half, half])
  state_a, metrics_a = accumulated.run([doubled, doubled])
  assert int(state_a.step[0]) == int(state_p.step[0]) == 2
  assert metrics_a[-1]['tau'] == metrics_p[-1]['tau']
  assert metrics_a[-1]['learning_rate'] == metrics_p[-1]['learning_rate']
  for name in ('online_params', 'target_params'):
    a, p = _flat(getattr(state_a, name)), _flat(getattr(state_p, name))
    for key in p:
      np.testing.assert_allclose(a[key], p[key], rtol=1e-6, atol=1e-7, err_msg=key)
  counters = [v for k, v in _flat(state_a.online_state).items() if k.endswith('counter')]
  assert all(int(c[0]) == 8 for c in counters)  # 2 calls x 2 micro-batches x 2 views


def test_official_augmentation_rng_chain_and_device_split(batches):
  """augmentation.rng='official': the loop key starts at PRNGKey(0) and is split every
  step into (step key, next); the step key is split over the devices and each device
  augments its shard with its own key (spec 6.3, 7.4)."""
  from byol_jax import augmentations, losses
  num_devices = min(2, jax.local_device_count())
  run = runner(num_devices, augmentation__rng='official')
  state0 = run.init()
  np.testing.assert_array_equal(state0.rng, jax.random.PRNGKey(0))
  state1, metrics = run.run(batches[:1], state0)
  step_key, next_key = jax.random.split(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(state1.rng[0], next_key)

  cfg, net = run.config.augmentation, run.network

  def expected(key, view1, view2):
    key1, key2 = augmentations.official_view_keys(key)
    views = (augmentations.augment_view_official(key1, view1, cfg.view1),
             augmentations.augment_view_official(key2, view2, cfg.view2))
    online = [net.apply(state0.online_params, state0.online_state, v, True)[0]
              for v in views]
    target = [net.apply(state0.target_params, state0.target_state, v, True, target=True)[0]
              for v in views]
    loss = losses.byol_loss(online[0]['prediction'], online[1]['prediction'],
                            target[0]['projection'], target[1]['projection'])
    return jax.lax.pmean(loss, update.AXIS_NAME)

  sharded = shard(batches[0], num_devices)
  loss = jax.pmap(expected, axis_name=update.AXIS_NAME, devices=run.devices)(
      jax.random.split(step_key, num_devices), sharded['view1'], sharded['view2'])
  np.testing.assert_allclose(metrics[0]['repr_loss'], float(loss[0]), rtol=0, atol=4e-6)
  # A per-image run of the same batch augments differently.
  _, per_image = runner(num_devices).run(batches[:1])
  assert abs(per_image[0]['repr_loss'] - metrics[0]['repr_loss']) > 1e-4


def test_first_batch_bn_init_is_the_official_pmapped_init(batches):
  """model.bn_init='first_batch': Haiku's init on view 1 of the first batch, moments
  synced over devices: EMA counters and hidden 0, `average` = the batch statistics."""
  from byol_jax import networks
  net = runner(1).network
  key = jax.random.PRNGKey(0)
  batch = batches[0]
  states = {n: networks.init_network_from_batch(net, key, shard(batch, n)['view1'])
            for n in sorted({1, min(2, jax.local_device_count())})}
  params, state = states[1]
  reference_params, _ = networks.init_network(net, key, IMAGE)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)):
    np.testing.assert_array_equal(a, b)  # params depend on the key alone
  flat = _flat(state)
  for key_, value in flat.items():
    if key_.endswith(('counter', 'hidden')):
      assert not np.any(value), key_
    np.testing.assert_allclose(_flat(states[max(states)][1])[key_], value, rtol=0,
                               atol=7e-6, err_msg=key_)
  # Stem BN mean: the mean of view 1's stem convolution over the whole global batch.
  w = params['tiny_res_net/~/initial_conv']['w']
  x = networks.normalize_images(jax.numpy.asarray(batch['view1']))
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(
      flat['tiny_res_net/~/initial_batchnorm/~/mean_ema/average'].reshape(-1),
      np.asarray(y).mean(axis=(0, 1, 2)), rtol=0, atol=2e-6)
