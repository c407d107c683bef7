"""What a patched model carries: the validated settings, and the layers and family of one model."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..asag_core import ASAGSettings, resolve_layers
from . import comfy_contract as contract
from .families import Family, family_of
from .model_layers import auto_spec, layer_catalog


@dataclass(frozen=True)
class ASAGPlan:
    """Settings plus the layers resolved against one model (immutable: clones may share it).

    The start/end percent window is resolved at sampling time, from the model sampling the
    model samples with then (:meth:`active_at`), as ComfyUI's ControlNet Apply Advanced and
    ConditioningSetTimestepRange do: a ModelSampling node placed after ASAG moves the sigmas, and
    the same percents must select the same steps whichever side of it ASAG sits."""

    settings: ASAGSettings
    layers: tuple
    family: Family
    #: the loaded model's config class (SD15, Flux2...), for messages
    model_name: str

    def window(self, model_sampling) -> tuple[float, float]:
        """``(sigma_start, sigma_end)`` of the percent window on this model sampling: SD's sigmas run
        14.6 → 0.03, a flow model's 1 → 0. The defaults leave it unbounded."""
        start, end = self.settings.start_percent, self.settings.end_percent
        # percent 0 is "from the first step" whatever the schedule's top sigma (a flow model maps it to 1.0)
        sigma_start = math.inf if start <= 0.0 else float(model_sampling.percent_to_sigma(start))
        sigma_end = float(model_sampling.percent_to_sigma(end))
        return sigma_start, sigma_end

    def active_at(self, sigma: float, model_sampling) -> bool:
        """Whether ASAG guides the step at noise level ``sigma``: both bounds inclusive, as in
        ComfyUI's SkipLayerGuidance (``sigma_end <= sigma <= sigma_start``)."""
        if self.settings.scale == 0.0:
            return False
        sigma_start, sigma_end = self.window(model_sampling)
        return sigma_end <= sigma <= sigma_start


def resolve(model_patcher, spec: str) -> tuple:
    """The layers a ``layers`` spec names on this model, "auto" its family's default (as the nodes resolve it)."""
    family = family_of(contract.uncompiled(contract.diffusion_model(model_patcher.model)))
    catalog = layer_catalog(model_patcher)
    return tuple(resolve_layers(spec, catalog, auto=auto_spec(family, catalog)))


def make_plan(model_patcher, settings: ASAGSettings) -> ASAGPlan:
    """Resolve the layer spec against this model now, so a bad spec fails on the node."""
    family = family_of(contract.uncompiled(contract.diffusion_model(model_patcher.model)))
    return ASAGPlan(settings, resolve(model_patcher, settings.layers), family, contract.config_name(model_patcher))


def copy_plan(plan: ASAGPlan, **settings_changes) -> ASAGPlan:
    """The plan with some settings changed; its layers are kept (they were resolved against the
    model, so the layer spec is not for changing here)."""
    if "layers" in settings_changes:
        raise ValueError("copy_plan keeps the plan's layers: a new layer spec needs a new plan (make_plan)")
    settings = plan.settings
    if settings_changes:
        settings = ASAGSettings(**{**settings.__dict__, **settings_changes})
    return replace(plan, settings=settings)


__all__ = ["ASAGPlan", "copy_plan", "make_plan", "resolve"]
