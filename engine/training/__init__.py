"""Setting a training run up and running it: ``train``, ``trainer``, ``batchnorm``, ``checkpoints``."""
