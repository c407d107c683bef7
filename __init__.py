"""comfyui-asag: Adversarial Sinkhorn Attention Guidance for ComfyUI.

ComfyUI imports this package from custom_nodes/ and awaits ``comfy_entrypoint``.
The math lives in ``asag_core`` (no ComfyUI import); ``nodes`` is the glue. The glue is
imported inside the entrypoint so that importing the package itself (pytest does, for
the directory's __init__.py) never needs ComfyUI on the path.

``WEB_DIRECTORY`` is served by ComfyUI at /extensions/<pack folder>/; the frontend reads the
node docs of its help panel from its ``docs/<node id>.md``. Translations live in ``locales/``,
which ComfyUI finds by itself.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import ASAGExtension

    return ASAGExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
