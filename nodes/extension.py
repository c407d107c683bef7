"""The extension ComfyUI's loader gets from the pack's ``comfy_entrypoint``."""

from typing_extensions import override

from .comfy_bridge import ComfyExtension, io
from .guidance_nodes import NODES


class ASAGExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
