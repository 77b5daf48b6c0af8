"""Training and run directories: the trainer, its settings and command line, checkpoints, and reading runs back."""

from blocks.training.config import TrainConfig
from blocks.training.runs import Run, checkpoint_status, list_checkpoints, load_run
from blocks.training.trainer import Trainer, TrainingDiverged, TrainResult

__all__ = [
    "Run",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "checkpoint_status",
    "list_checkpoints",
    "load_run",
]
