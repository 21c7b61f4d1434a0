import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import losses


def _vectors(seed, shape=(16, 32)):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def test_regression_loss_is_two_minus_two_cosine():
  p, z = _vectors(0), _vectors(1)
  cos = np.sum(p * z, -1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(z, axis=-1))
  np.testing.assert_allclose(losses.regression_loss(p, z), 2 - 2 * cos, rtol=1e-5, atol=1e-6)
  # Scale invariance: only directions matter.
  np.testing.assert_allclose(losses.regression_loss(3. * p, 0.5 * z), 2 - 2 * cos,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.regression_loss(p, p), 0., atol=1e-6)
  np.testing.assert_allclose(losses.regression_loss(p, -p), 4., atol=1e-5)


def test_l2_normalize_epsilon_on_squared_norm():
  tiny = jnp.full((1, 4), 1e-8)
  # ||x||^2 = 4e-16 < 1e-12, so x is divided by sqrt(1e-12) = 1e-6, not by its norm.
  np.testing.assert_allclose(losses.l2_normalize(tiny), tiny / 1e-6, rtol=1e-6)


def test_byol_loss_is_symmetric_and_mean_over_batch():
  p1, p2, z1, z2 = (_vectors(i) for i in range(4))
  loss = losses.byol_loss(p1, p2, z1, z2)
  np.testing.assert_allclose(loss, losses.byol_loss(p2, p1, z2, z1), rtol=1e-6)
  expected = np.mean(losses.regression_loss(p1, z2) + losses.regression_loss(p2, z1))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert 0. <= float(loss) <= 8.


def test_no_gradient_reaches_the_target_side():
  p1, p2, z1, z2 = (_vectors(i) for i in range(4))
  grads = jax.grad(losses.byol_loss, argnums=(0, 1, 2, 3))(p1, p2, z1, z2)
  assert np.abs(grads[0]).max() > 0 and np.abs(grads[1]).max() > 0
  np.testing.assert_array_equal(grads[2], 0.)
  np.testing.assert_array_equal(grads[3], 0.)


def test_softmax_cross_entropy_and_topk():
  logits = jnp.array([[2., 1., 0.], [0., 0., 5.], [1., 1., 1.]])
  labels = jnp.array([0, 1, 2])
  log_softmax = jax.nn.log_softmax(logits)
  expected = -np.mean([log_softmax[0, 0], log_softmax[1, 1], log_softmax[2, 2]])
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), expected,
                             rtol=1e-6)
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 1), [1., 0., 0.])
  # Ties count against the label: [0, 0, 5] with label 1 ties class 0 -> rank 3.
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 2), [1., 0., 0.])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 3), [1., 1., 1.])
  nan_logits = logits.at[0].set(jnp.nan)
  np.testing.assert_array_equal(losses.topk_correct(nan_logits, labels, 3), [0., 1., 1.])
