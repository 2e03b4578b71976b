from .attention import FrameLocalAttention, KVCache
from .ssd import ssd_chunked, ssd_reference, ssd_scan
from .ssm import BlockwiseSSM, Mamba2, SSMState
from .world_model import WorldCache, WorldModel

__all__ = ["BlockwiseSSM", "FrameLocalAttention", "KVCache", "Mamba2", "SSMState", "WorldCache", "WorldModel",
           "ssd_chunked", "ssd_reference", "ssd_scan"]
