"""a3jax: JAX/Flax pretraining of A3 (Any-order Any-subset Autoregressive) language models."""

__version__ = "0.1.0"
