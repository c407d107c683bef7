"""comfyui-asag: Adversarial Sinkhorn Attention Guidance for ComfyUI.

ComfyUI imports this package from custom_nodes/ and calls ``comfy_entrypoint``.
The math lives in ``asag_core`` (no ComfyUI import); ``nodes`` is the glue.
"""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
