"""ComfyUI glue: the ASAG nodes and the extension that registers them."""

from typing_extensions import override

from .comfy_internals import ComfyExtension, io
from .guidance_nodes import NODES


class ASAGExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
