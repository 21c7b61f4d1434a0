"""BYOL's normalised regression loss and the online classifier's loss (spec 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
  """x / max(||x||, sqrt(eps)); eps is applied to the squared norm, as the official code."""
  square_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(square_sum, epsilon))


def regression_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example ||n(p) - n(z)||^2 = 2 - 2 cos(p, z); float32 whatever the inputs."""
  p = l2_normalize(prediction.astype(jnp.float32))
  z = l2_normalize(target.astype(jnp.float32))
  return jnp.sum(jnp.square(p - z), axis=-1)


def byol_loss(prediction_view1: jax.Array, prediction_view2: jax.Array,
              target_projection_view1: jax.Array,
              target_projection_view2: jax.Array) -> jax.Array:
  """Symmetrised loss, mean over the batch; range [0, 8]. Target side is stop-gradient."""
  target1 = jax.lax.stop_gradient(target_projection_view1)
  target2 = jax.lax.stop_gradient(target_projection_view2)
  per_example = (regression_loss(prediction_view1, target2) +
                 regression_loss(prediction_view2, target1))
  return jnp.mean(per_example)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy against integer labels."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)
  return -jnp.mean(picked)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k highest logits, else 0.0 (per example).

  Ties count against the label (a constant classifier scores 0, not 1) and a
  non-finite label logit is never correct, so a diverged classifier cannot score.
  """
  label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)
  rank = jnp.sum(logits >= label_logit, axis=-1) - 1
  return ((rank < k) & jnp.isfinite(label_logit[:, 0])).astype(jnp.float32)
