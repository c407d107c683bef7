"""The model files this pack's own (SD1.5) workflows name: official release names, the ComfyUI
``models/`` folder each goes in, where each is published, and the check of a workflow against them.
The template workflows' files are the templates' own (their loaders' ``properties.models``)."""

from __future__ import annotations

import re

from tests.workflow_graph import widget

# Every model file a workflow (a loader widget, a download link or a Note) names: official release
# file names and the ComfyUI models/ subfolder each goes into.
MODEL_FILES = {
    "v1-5-pruned-emaonly-fp16.safetensors": "checkpoints",
    "control_v11p_sd15_canny_fp16.safetensors": "controlnet",
    "control_v11p_sd15_canny.pth": "controlnet",
    "ip-adapter-plus_sd15.safetensors": "ipadapter",
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": "clip_vision",
}

# Where each file is published (the download links the workflows embed must be one of these).
_HF = "https://huggingface.co/"
MODEL_SOURCES = {
    "v1-5-pruned-emaonly-fp16.safetensors": (
        _HF + "Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",),
    "control_v11p_sd15_canny_fp16.safetensors": (
        _HF + "comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11p_sd15_canny_fp16.safetensors",),
    "control_v11p_sd15_canny.pth": (_HF + "lllyasviel/ControlNet-v1-1/resolve/main/control_v11p_sd15_canny.pth",),
    "ip-adapter-plus_sd15.safetensors": (
        _HF + "h94/IP-Adapter/resolve/main/models/ip-adapter-plus_sd15.safetensors",),
    # published as models/image_encoder/model.safetensors; ComfyUI_IPAdapter_plus wants it renamed
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": (
        _HF + "h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",),
}

# (loader node, widget) -> the models/ subfolder the file it names must live in
LOADER_FOLDERS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("VAELoader", "vae_name"): "vae",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("ControlNetLoader", "control_net_name"): "controlnet",
}

MODEL_FILE_RE = re.compile(r"[\w./\-]+\.(?:safetensors|sft|ckpt|pth|pt|bin|gguf)\b")


def check_models(wf) -> list[str]:
    """Model files: official names (MODEL_FILES), in the right folder, with official download links."""
    errors = []
    for node in wf["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        values = node.get("widgets_values") or []
        strings = [v for v in values if isinstance(v, str)]
        for text in strings:
            for token in MODEL_FILE_RE.findall(text):
                name = token.rsplit("/", 1)[-1]
                if name not in MODEL_FILES:
                    errors.append(f"{where}: names {name!r}, not an official file in MODEL_FILES")
                    continue
                parts = token.split("/")
                folder = MODEL_FILES[name]
                if len(parts) >= 3 and parts[-3] == "models" and parts[-2] != folder:
                    errors.append(f"{where}: puts {name} in models/{parts[-2]}, it belongs in models/{folder}")
        for (ntype, name_of_widget), folder in LOADER_FOLDERS.items():
            if ntype == node["type"]:
                name = widget(node, name_of_widget)
                if MODEL_FILES.get(name) != folder:
                    errors.append(f"{where}: {name_of_widget}={name!r} is not an official {folder}/ file")
        for model in node.get("properties", {}).get("models", []):
            name = model.get("name")
            if MODEL_FILES.get(name) != model.get("directory"):
                errors.append(f"{where}: download entry {name!r} -> {model.get('directory')!r} contradicts MODEL_FILES")
            if model.get("url", "").split("?")[0] not in MODEL_SOURCES.get(name, ()):
                errors.append(f"{where}: download link {model.get('url')!r} is not an official source of {name}")
            if name not in values:
                errors.append(f"{where}: download entry {name!r} is not what the node selects")
    return errors
