"""Learning-rate and target-decay schedules as functions of the carried step (spec 3, 4.3)."""

from __future__ import annotations

import jax.numpy as jnp


def steps_from_epochs(epochs: float, num_examples: int, batch_size: int) -> int:
  """The official `epochs * num_examples // batch_size` (e.g. 1000 ImageNet epochs at 4096: 312,784)."""
  return int(epochs * num_examples // batch_size)


def learning_rate(step, *, base_lr: float, batch_size: int, total_steps: int,
                  warmup_steps: int):
  """Linear warmup from 0 to base_lr * B / 256 over W steps, then cosine to 0 at K."""
  peak = base_lr * batch_size / 256.
  step = jnp.asarray(step, jnp.float32)
  warmup = peak * step / max(warmup_steps, 1)
  decay_steps = max(total_steps - warmup_steps, 1)
  progress = jnp.minimum(step - warmup_steps, total_steps - warmup_steps) / decay_steps
  cosine = peak * 0.5 * (1. + jnp.cos(jnp.pi * progress))
  return jnp.where(step < warmup_steps, warmup, cosine)


def target_ema(step, *, base_ema: float, total_steps: int):
  """tau_k = 1 - (1 - tau_base) (cos(pi min(k, K) / K) + 1) / 2: tau_base at 0, 1 at K."""
  step = jnp.asarray(step, jnp.float32)
  progress = jnp.minimum(step, total_steps) / total_steps
  return 1. - (1. - base_ema) * (jnp.cos(jnp.pi * progress) + 1.) / 2.
