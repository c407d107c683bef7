"""What one sampling step hands from its batched call to its post-CFG function, and what is said once
per sampling run. Pure: no ComfyUI import."""

from __future__ import annotations

import threading
import weakref

from . import comfy_contract as contract

#: no batched call left anything for this evaluation (None: a cache skipped the layers)
MISSING = object()


class Handoff:
    """Adversarial predictions from the batched call to the post-CFG function of the same model
    evaluation, keyed by that evaluation's input tensor (the very object ``sampling_function`` passes
    to both) and taken, not read: nothing is shared between steps, samplings or threads."""

    def __init__(self):
        self._entries = {}
        self._lock = threading.Lock()

    def put(self, x, value):
        with self._lock:
            # entries of evaluations whose post-CFG function never ran die with their input
            self._entries = {k: e for k, e in self._entries.items() if e[0]() is not None}
            self._entries[id(x)] = (weakref.ref(x), value)

    def take(self, x):
        """The value put for ``x``, once; :data:`MISSING` if there is none."""
        with self._lock:
            entry = self._entries.pop(id(x), None)
        if entry is None or entry[0]() is not x:
            return MISSING
        return entry[1]


class OncePerRun:
    """Says a thing once per sampling run (a run is identified by its sigma schedule object)."""

    def __init__(self):
        self._seen = None

    def __call__(self, model_options, say):
        run = model_options.get(contract.TRANSFORMER_OPTIONS, {}).get(contract.SAMPLE_SIGMAS)
        ref = run if run is not None else model_options
        if self._seen is not None and self._seen() is ref:
            return
        try:
            self._seen = weakref.ref(ref)
        except TypeError:  # a plain dict: compare by identity for this run only
            self._seen = lambda ref=ref: ref
        say()
