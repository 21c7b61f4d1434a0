"""LARS in the official BYOL order, built from optax transforms (spec 4.1, 4.2).

    add weight decay -> trust ratio (eta) -> heavy-ball momentum -> scale by -lr

`optax.lars` scales by the learning rate *before* the momentum trace; with a
time-varying lr that is a different optimiser, so we compose the chain ourselves. The
momentum buffer accumulates lr-free updates and the current lr multiplies the buffer.
The lr is not a schedule inside the optimiser state: the update step computes it from
the step it carries and passes it as `opt.update(..., learning_rate=lr)`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax


def exclude_bias_and_norm(module_name: str, name: str) -> bool:
  """The official filter: linear biases `b` and every BN module (path contains 'norm')."""
  return name == 'b' or 'norm' in module_name


def adaptation_mask(params: hk.Params) -> Any:
  """True where weight decay and trust-ratio adaptation apply, False on biases and BN."""
  return hk.data_structures.map(
      lambda module_name, name, _: not exclude_bias_and_norm(module_name, name), params)


def scale_by_trust_ratio(eta: float) -> optax.GradientTransformation:
  """u <- u * eta ||w|| / ||u||, and u unchanged where either norm is 0 (no epsilon)."""

  def update_fn(updates, state, params):
    def scale(u, w):
      w_norm = jnp.linalg.norm(w)
      u_norm = jnp.linalg.norm(u)
      ratio = eta * w_norm / u_norm
      ratio = jnp.where(w_norm > 0., jnp.where(u_norm > 0., ratio, 1.), 1.)
      return u * ratio

    return jax.tree.map(scale, updates, params), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


class ScaleByLearningRateState(NamedTuple):
  """Empty: the learning rate comes from the caller each step."""


def scale_by_negative_learning_rate() -> optax.GradientTransformationExtraArgs:
  """Multiplies by -learning_rate, given per call as the `learning_rate` extra argument."""

  def update_fn(updates, state, params=None, *, learning_rate, **unused_extra_args):
    del params
    return jax.tree.map(lambda u: u * -learning_rate, updates), state

  return optax.GradientTransformationExtraArgs(
      lambda _: ScaleByLearningRateState(), update_fn)


def lars(weight_decay: float, eta: float = 1e-3, momentum: float = 0.9,
         mask=adaptation_mask) -> optax.GradientTransformationExtraArgs:
  """The BYOL LARS chain; call `update(grads, state, params, learning_rate=lr)`.

  `mask(params)` selects the leaves that get weight decay and trust-ratio adaptation.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=mask),
      optax.masked(scale_by_trust_ratio(eta), mask),
      optax.trace(decay=momentum, nesterov=False),
      scale_by_negative_learning_rate(),
  )


def optimizer_from_config(optimizer_config) -> optax.GradientTransformationExtraArgs:
  if optimizer_config.name != 'lars':
    raise ValueError(f"optimizer.name={optimizer_config.name!r} is unknown; only 'lars' "
                     'is implemented (the paper and the official code use LARS).')
  return lars(weight_decay=optimizer_config.weight_decay, eta=optimizer_config.eta,
              momentum=optimizer_config.momentum)
