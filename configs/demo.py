"""The built-in demo (same as running byol-jax-train without --config)."""

from byol_jax import demo_config


def get_config():
  return demo_config.get_config()
