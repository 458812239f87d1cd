"""worldsdk-train: the Hydra app (`trainers.app`), the shared loop (`trainers.loop`) and the stages.

A stage subclasses `Stage` and returns its modules, data set and a schedule of `Update`s; `train`
does the rest. See docs/training.md.
"""

from .loop import LoopConfig, TrainResult, train
from .stage import ModelChoice, OptimizerConfig, RunContext, Stage, Update

__all__ = ["LoopConfig", "ModelChoice", "OptimizerConfig", "RunContext", "Stage", "TrainResult", "Update", "train"]
