"""Training: teacher pretraining on the testbed, SwD distillation, checkpoints."""
