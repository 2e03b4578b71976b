"""lssvwm: long-context state-space video world models (Po et al., 2025, arXiv 2505.20171)."""
from . import checkpoint  # noqa: F401 - registers save/load/push of WorldModel (models/world_model.PRETRAINED_IO)
from .config import ModelConfig, RunConfig, model_preset
from .dream import DreamEnv
from .models.world_model import WorldCache, WorldModel

__version__ = "0.1.0"
__all__ = ["DreamEnv", "ModelConfig", "RunConfig", "WorldCache", "WorldModel", "model_preset"]
