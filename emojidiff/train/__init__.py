"""Training: the shared Accelerate loop, checkpoints and resume (stage 1, IDI rounds, ICA)."""

from .config import TrainConfig

__all__ = ["TrainConfig"]
