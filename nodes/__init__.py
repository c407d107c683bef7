"""ComfyUI glue: the ASAG nodes (``guidance_nodes.py``) and what they need of ComfyUI.

Nothing is imported here, so the pure modules (``comfy_contract``, ``families``, ``row_split``,
``handoff``...) can be imported without ComfyUI; ``extension.py`` is what ComfyUI loads.
"""
