"""Core: model, kernels, sharding, data, FLOP counting, checkpoints and the training loop."""
