"""Training side of learned_optim: tasks, unrolls, meta-training. Never imported by the runtime."""
