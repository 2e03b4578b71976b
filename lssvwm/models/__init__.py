from .attention import FrameLocalAttention, KVCache
from .ssm import BlockwiseSSM, Mamba2, SSMState, ssd_chunked, ssd_reference, ssd_scan
from .world_model import WorldCache, WorldModel

__all__ = ["BlockwiseSSM", "FrameLocalAttention", "KVCache", "Mamba2", "SSMState", "WorldCache", "WorldModel",
           "ssd_chunked", "ssd_reference", "ssd_scan"]
