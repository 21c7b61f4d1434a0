"""byol-jax: BYOL (Bootstrap Your Own Latent, arXiv 2006.07733) in JAX/Haiku."""

__version__ = '0.1.0'
