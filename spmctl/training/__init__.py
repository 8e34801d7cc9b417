"""Training: the SPM objective, its loop, checkpoints and optimizers."""
