"""Training on one host: optimizer, jitted steps, metrics, checkpoints and the loop."""
