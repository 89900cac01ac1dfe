"""RewardLoop: fine-grained rewards, rich human feedback and DPG personalization for text-to-image.

ComfyUI imports this file as the custom-node entry point (under whatever the folder is called), so it only
collects node classes; no model code is imported here. The library is importable as ``rewardloop``.
"""
from .nodes import IMPORT_ERRORS, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

try:  # register our model folders (sams, LLM, blip, rich_feedback, ...) with ComfyUI when it is running
    from . import bridge as _bridge
    _bridge.register_model_folders()
except Exception:  # pragma: no cover - never block loading the pack
    pass

__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "IMPORT_ERRORS"]
