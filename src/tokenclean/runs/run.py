"""``Run``: the small context every stage function (``runs.stages``) and method (``runs.methods``) takes.

A run is a run directory with its settings: the stage engine over that directory (``runs.store.Store``), the paths
of one method and seed in it (``runs.layout.Layout``), and what is loaded or measured once per process (the
tokenizer and its fingerprint, the base model's fingerprint, dtypes as resolved on this machine). A compare
directory gives each seed and method its own ``variant``: its own layout, the same directory and loaded state.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from ..config import renamed_settings, speed_settings
from .layout import Layout
from .store import Store, write_config

if TYPE_CHECKING:  # imported where used: the settings' sections import torch, the report imports the methods
    from .config import RunConfig


class Run(Store):
    """The run directory ``cfg.run.out`` for one method and seed (``layout``: where its stages live)."""

    def __init__(self, cfg: RunConfig, layout: Layout | None = None, shared: Run | None = None):
        cfg.check()
        super().__init__(cfg.run.out, shared)
        self.cfg = cfg
        self.layout = layout or Layout(self.dir)
        self._loaded: dict[Any, Any] = shared._loaded if shared else {}  # once per process, shared by variants

    def variant(self, method: str, seed: int, name: str | None = None) -> Run:
        """The same run directory for another method and seed, in ``seed-<s>/<name or method>/``, sharing loaded
        state."""
        cfg = copy.deepcopy(self.cfg)
        cfg.run.method, cfg.run.seed = method, seed
        return Run(cfg, Layout.variant_of(self.dir, seed, name or method), shared=self)

    def _once(self, key: Any, make: Any) -> Any:
        if key not in self._loaded:
            self._loaded[key] = make()
        return self._loaded[key]

    @property
    def tokenizer(self):
        from ..compute.modeling import load_tokenizer

        return self._once("tokenizer", lambda: load_tokenizer(self.cfg.run.base, self.cfg.run.trust_remote_code))

    @property
    def tokenizer_key(self) -> str:
        """The tokenizer's fingerprint (serialising a large vocabulary is not free: once per process)."""
        from ..core.fingerprints import tokenizer_fingerprint

        return self._once("tokenizer_key", lambda: tokenizer_fingerprint(self.tokenizer))

    @property
    def base_fingerprint(self) -> str:
        from ..compute.modeling import source_fingerprint

        return self._once("base", lambda: source_fingerprint(self.cfg.run.base))

    @property
    def scoring_dtype(self) -> str:
        """``--dtype`` under scoring's rule (``compute.hardware.scoring_dtype``: ``auto`` is float32)."""
        from ..compute.hardware import scoring_dtype

        return scoring_dtype(self.cfg.run.dtype)

    def resolved_dtype(self, dtype: str | None = None) -> str:
        """A dtype setting (``None``: the scoring dtype) as resolved on this machine (``compute.hardware``):
        "float32" or "bfloat16"."""
        dtype = self.scoring_dtype if dtype is None else dtype

        def resolve() -> str:
            from ..compute.modeling import resolve_device, resolve_dtype

            return str(resolve_dtype(dtype, resolve_device(self.cfg.run.device))).removeprefix("torch.")

        return self._once(("dtype", dtype), resolve)

    @property
    def cache(self) -> bool | str:
        """The score cache setting for ``compute.score_model``: False (``--no-cache``), a directory, or True."""
        return self.cfg.run.cache and (self.cfg.run.cache_dir or True)

    def write_config(self, ignore: tuple[str, ...] = ()) -> None:
        """Save the settings as ``config.yaml`` (``store.write_config``: a directory holding a run of other settings
        is refused without ``--overwrite``; settings that change only speed or memory, ``config.speed_settings``,
        do not count)."""
        from .config import RunConfig

        sections = RunConfig.SECTIONS.values()
        write_config(self.dir, self.cfg.flat(), RunConfig().flat(), self.cfg.run.overwrite,
                     (*ignore, *speed_settings(*sections)), renamed_settings(*sections))
