"""gankd_jax: GAN compression by knowledge distillation in JAX/Flax."""
