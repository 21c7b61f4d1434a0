import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol_jax import networks
from byol_jax import optimizers


def _hand_lars(params, grads_per_step, lrs, weight_decay, eta, momentum, excluded):
  """Reference in the official order, in float64 numpy: wd -> trust ratio -> momentum -> -lr."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  for grads, lr in zip(grads_per_step, lrs):
    for k in params:
      g = np.asarray(grads[k], np.float64)
      if not excluded[k]:
        g = g + weight_decay * params[k]
        w_norm, g_norm = np.linalg.norm(params[k]), np.linalg.norm(g)
        if w_norm > 0 and g_norm > 0:
          g = g * eta * w_norm / g_norm
      mu[k] = momentum * mu[k] + g
      params[k] = params[k] - lr * mu[k]
  return params


def test_lars_steps_match_hand_computation_in_official_order():
  rng = np.random.RandomState(0)
  params = {'layer': {'w': rng.randn(3, 4).astype(np.float32),
                      'b': rng.randn(4).astype(np.float32)},
            'layer/batch_norm': {'scale': rng.randn(1, 4).astype(np.float32)},
            'zero': {'w': np.zeros((2, 2), np.float32)}}
  grads = [jax.tree.map(lambda p: rng.randn(*p.shape).astype(np.float32), params)
           for _ in range(3)]
  lrs = [0.5, 2.0, 1.0]  # a time-varying lr is what tells the official order apart
  opt = optimizers.lars(weight_decay=0.1, eta=1e-3, momentum=0.9)
  state = opt.init(params)
  current = params
  for g, lr in zip(grads, lrs):
    updates, state = opt.update(g, state, current, learning_rate=lr)
    current = optax.apply_updates(current, updates)

  flat = lambda tree: {f'{m}/{n}': v for m, n, v in hk.data_structures.traverse(tree)}
  excluded = {'layer/w': False, 'layer/b': True, 'layer/batch_norm/scale': True,
              'zero/w': False}
  expected = _hand_lars(flat(params), [flat(g) for g in grads], lrs, 0.1, 1e-3, 0.9,
                        excluded)
  for k, v in flat(current).items():
    np.testing.assert_allclose(v, expected[k], rtol=2e-6, atol=1e-7, err_msg=k)

  # optax.lars scales by the lr before the momentum trace: with a varying lr it differs.
  reference = optax.lars(learning_rate=optax.piecewise_constant_schedule(
      0.5, {1: 4.0, 2: 0.5}), weight_decay=0.1, trust_coefficient=1e-3, momentum=0.9,
      weight_decay_mask=optimizers.adaptation_mask, trust_ratio_mask=optimizers.adaptation_mask)
  ref_state, ref_params = reference.init(params), params
  for g in grads:
    updates, ref_state = reference.update(g, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
  assert not np.allclose(flat(ref_params)['layer/w'], expected['layer/w'], rtol=1e-3)


def test_trust_ratio_is_one_for_zero_norms():
  opt = optimizers.scale_by_trust_ratio(eta=1e-3)
  params = {'a': jnp.zeros((2,)), 'b': jnp.ones((2,))}
  updates = {'a': jnp.ones((2,)), 'b': jnp.zeros((2,))}
  out, _ = opt.update(updates, opt.init(params), params)
  np.testing.assert_array_equal(out['a'], updates['a'])
  np.testing.assert_array_equal(out['b'], updates['b'])


@pytest.mark.parametrize('encoder', ['resnet18', 'resnet50'])
def test_excluded_set_is_exactly_biases_and_batchnorm(encoder):
  config = networks.model_config(encoder=encoder, width_multiplier=0.25,
                                 projector_hidden_size=64, predictor_hidden_size=64,
                                 projection_size=16)
  net = networks.make_byol_network(config, num_classes=10)
  params, _ = jax.eval_shape(
      lambda: networks.init_network(net, jax.random.PRNGKey(0), image_size=32))
  mask = optimizers.adaptation_mask(params)
  excluded = {f'{m}/{n}' for m, n, v in hk.data_structures.traverse(mask) if not v}
  expected = {f'{m}/{n}' for m, n, _ in hk.data_structures.traverse(params)
              if n in ('b', 'scale', 'offset')}
  assert excluded == expected
  # Every BN module and linear bias is in it, and nothing else: conv/linear weights remain.
  assert all(n == 'w' for m, n, v in hk.data_structures.traverse(mask) if v)
  num_bn = sum(1 for m in params if 'norm' in m)
  assert num_bn > 10
  assert {'projector/linear/b', 'predictor/linear/b', 'classifier/b'} <= excluded

