"""The stages of a run, over the stage engine (``runs.store``) and the paths of ``runs.layout``.

``Run`` is a run directory with its settings: each method of ``runs.methods`` is a short function over these
stages (tokens -> reference -> scores -> selection -> model -> export, held-out loss), which record their settings
and results and are skipped when already done. A compare directory gives each seed and method its own ``Run``
``variant`` (its own layout, the same directory, the same loaded tokenizer).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compute.distributed import fsdp_requested
from ..core.artifacts import Scores, Selection
from ..core.tokens import TokenOrigin, TokenTable
from ..config import renamed_settings, stage_settings
from ..io import write_json
from .config import RunConfig
from .layout import BASE_SCORES, EXPORT_PARQUET, TOKENS, Layout
from .store import Store, write_config
from .summary import MethodSummary

if TYPE_CHECKING:
    from ..compute.training import TrainConfig
    from ..selection.select import SelectConfig


class Run(Store):
    """The run directory ``cfg.run.out`` for one method and seed (``layout``: where its stages live)."""

    def __init__(self, cfg: RunConfig, layout: Layout | None = None, shared: Run | None = None):
        cfg.check()
        super().__init__(cfg.run.out, shared)
        self.cfg = cfg
        self.layout = layout or Layout(self.dir)
        self._cache: dict[Any, Any] = shared._cache if shared else {}  # loaded once per process: the tokenizer

    def variant(self, method: str, seed: int) -> Run:
        """The same run directory for another method and seed (``seed-<s>/<method>/``), sharing loaded state."""
        cfg = copy.deepcopy(self.cfg)
        cfg.run.method, cfg.run.seed = method, seed
        return Run(cfg, Layout.variant_of(self.dir, seed, method), shared=self)

    # -- shared state -------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        from ..compute.modeling import load_tokenizer

        if "tokenizer" not in self._cache:
            self._cache["tokenizer"] = load_tokenizer(self.cfg.run.base, self.cfg.run.trust_remote_code)
        return self._cache["tokenizer"]

    @property
    def base_fingerprint(self) -> str:
        from ..compute.modeling import source_fingerprint

        if "base" not in self._cache:
            self._cache["base"] = source_fingerprint(self.cfg.run.base)
        return self._cache["base"]

    # -- stages ----------------------------------------------------------------------------------------------------
    def tokens_stage(self) -> dict[str, TokenTable]:
        """Tokenize the pool, the warm-up data and the held-out data. Stage ``tokens`` with one directory each:
        ``pool`` (what methods train on), ``warmup`` (if given), ``eval`` (``--eval-data``, or a fixed
        ``--eval-fraction`` of the pool, which is then removed from ``pool``)."""
        from ..core.fingerprints import path_fingerprint
        from ..core.prepare import prepare_tokens

        c = self.cfg
        inputs = {"data": path_fingerprint(c.run.data), "tokenizer": self._tokenizer_key(),
                  "warmup_data": c.run.warmup_data and path_fingerprint(c.run.warmup_data),
                  "eval_data": c.run.eval_data and path_fingerprint(c.run.eval_data),
                  "eval_fraction": 0.0 if c.run.eval_data else c.run.eval_fraction,
                  "data_config": asdict(c.data), "tokenize_config": asdict(c.tokenize)}

        def build(tmp: Path) -> dict[str, Any]:
            pool, report = prepare_tokens(c.run.data, self.tokenizer, c.data, c.tokenize)
            result: dict[str, Any] = {"load": report.to_dict()}
            tables = {"pool": pool}
            for name, source in (("warmup", c.run.warmup_data), ("eval", c.run.eval_data)):
                if source:
                    tables[name], rep = prepare_tokens(source, self.tokenizer, c.data, c.tokenize)
                    result[f"{name}_load"] = rep.to_dict()
            if inputs["eval_fraction"]:
                # A fixed split (seed 0), the same for every method and seed, so held-out losses are comparable.
                perm = np.random.default_rng(0).permutation(len(pool))
                n_eval = max(1, int(round(inputs["eval_fraction"] * len(pool))))
                tables["eval"] = pool.select(np.sort(perm[:n_eval]))
                tables["pool"] = pool.select(np.sort(perm[n_eval:]))
                result["load"]["heldout"] = n_eval  # used rows held out of the pool
            for name, table in tables.items():
                table.save(tmp / name)
                result[name] = _counts(table.meta)
            return result

        self.stage(TOKENS, inputs, build)
        return {d.name: TokenTable.load(d) for d in sorted(self.path(TOKENS).iterdir()) if d.is_dir()}

    def _tokenizer_key(self) -> str:
        from ..core.fingerprints import tokenizer_fingerprint

        if "tokenizer_key" not in self._cache:  # serialising a large vocabulary is not free; once per process
            self._cache["tokenizer_key"] = tokenizer_fingerprint(self.tokenizer)
        return self._cache["tokenizer_key"]

    def warmup_split(self, tables: dict[str, TokenTable]) -> TokenTable:
        """The warm-up set: the given warm-up data, else ``warmup_fraction`` of the pool: its top-rated rows by
        ``--warmup-rated-by``, or a seeded random share."""
        if "warmup" in tables:
            return tables["warmup"]
        pool, c, field = tables["pool"], self.cfg.run, self.cfg.warmup.warmup_rated_by
        n_warm = max(1, int(round(c.warmup_fraction * len(pool))))
        if field:
            from ..core.readers import _read_source
            from .warmup import top_rated

            rows, lines = _read_source(c.data)
            return pool.select(np.sort(top_rated(rows, field, pool.sample_ids, n_warm, str(c.data), lines)))
        return pool.select(np.sort(np.random.default_rng(c.seed).permutation(len(pool))[:n_warm]))

    def warmup_train_config(self, warmup: TokenTable) -> TrainConfig:
        """The reference's training settings (``runs.warmup``): the final fine-tune's, with the warm-up's epochs,
        learning rate and minimum number of optimizer steps over ``warmup``."""
        from ..compute.distributed import launched_processes
        from .warmup import reference_train_config

        return reference_train_config(self.cfg.train, self.cfg.warmup, len(warmup), launched_processes())

    def train_stage(self, name: str, model_key: str, model_path: str | Path, tokens: TokenTable,
                    keep: tuple[str, np.ndarray] | None = None, slm: tuple[str, np.ndarray] | None = None,
                    save_adapter: bool = False, train_config: TrainConfig | None = None) -> Path:
        """Train ``model_path`` on ``tokens``: the kept tokens of ``keep`` = (key, mask), Rho-1 online selection
        with ``slm`` = (key, reference losses), else all response tokens. ``save_adapter``: keep the unmerged
        LoRA adapter in ``adapter/`` too. ``train_config``: other settings than the run's (the warm-up's)."""
        from ..compute.finetune import finetune
        from ..compute.training import OnlineSelection

        c = self.cfg
        train_config = train_config or c.train
        inputs = {"model": model_key, "tokens": tokens.meta["tokens_fingerprint"],
                  "keep": keep and keep[0],
                  "slm": slm and [slm[0], c.select.keep_ratio], "train_config": stage_settings(train_config),
                  "drop_empty": c.select.drop_empty, "seed": c.run.seed}
        mask = keep[1] if keep else None
        self.stage(name, inputs, lambda tmp: finetune(
            str(model_path), self.tokenizer, tokens, tmp, train_config=train_config, keep_mask=mask,
            drop_empty=c.select.drop_empty, seed=c.run.seed, device=c.run.device,
            trust_remote_code=c.run.trust_remote_code, checkpoint_dir=self.work_dir(name, inputs),
            slm=OnlineSelection(slm[1], c.select.keep_ratio) if slm else None, save_adapter=save_adapter))
        return self.path(name)

    @property
    def cache(self) -> bool | str:
        """The score cache setting for ``compute.score_model``: False (``--no-cache``), a directory, or True (the default)."""
        return self.cfg.run.cache and (self.cfg.run.cache_dir or True)

    def _score_inputs(self, model_key: str, tokens: TokenTable, dtype: str | None = None) -> dict[str, Any]:
        # the dtype auto resolves to on this machine: "auto" means bf16 on one CPU and fp32 on another
        return {"model": model_key, "tokens": tokens.meta["tokens_fingerprint"], "dtype": self.resolved_dtype(dtype)}

    @property
    def scoring_dtype(self) -> str:
        """``--dtype`` as resolved on this machine (``compute.hardware``): "float32" or "bfloat16"."""
        return self.resolved_dtype(self.cfg.run.dtype)

    def resolved_dtype(self, dtype: str | None) -> str:
        """A dtype setting (``None``: ``--dtype``) as resolved on this machine: "float32" or "bfloat16"."""
        dtype = self.cfg.run.dtype if dtype is None else dtype
        if ("dtype", dtype) not in self._cache:
            from ..compute.modeling import resolve_device, resolve_dtype

            resolved = resolve_dtype(dtype, resolve_device(self.cfg.run.device))
            self._cache["dtype", dtype] = str(resolved).removeprefix("torch.")
        return self._cache["dtype", dtype]

    def base_model_record(self) -> dict[str, Any]:
        """The base model as given, its fingerprint, and for a GGUF source the file it was converted from
        (``compute.gguf``: name, size, sha256, converter versions)."""
        from ..compute import gguf

        record = {"source": str(self.cfg.run.base), "fingerprint": self.base_fingerprint}
        if gguf.is_gguf_source(self.cfg.run.base):
            record["gguf"] = gguf.read_source(gguf.converted_dir(self.cfg.run.base))
        return record

    def compute_facts(self) -> dict[str, Any]:
        """What ran this run's numbers: device, CPU capability, whether bf16 is native, the scoring dtype and
        whether training autocasts to bf16 (``compute.hardware``)."""
        import torch

        from ..compute.hardware import compute_facts, resolve_bf16
        from ..compute.modeling import resolve_device

        device = resolve_device(self.cfg.run.device)
        return {**compute_facts(device, getattr(torch, self.scoring_dtype)),
                "train_bf16": resolve_bf16(self.cfg.train.bf16, device)}

    def score_stage(self, name: str, model_key: str, model_path: str | Path, tokens: TokenTable,
                    cache: bool = False, compute: Callable[[], Scores] | None = None,
                    dtype: str | None = None) -> Scores:
        """Token losses of ``tokens`` under ``model_path``, through the score cache when ``cache`` (and the run's
        ``--cache``). ``compute`` replaces scoring ``model_path`` alone (e.g. scores from an adapter pair);
        ``dtype`` replaces ``--dtype`` (``--eval-dtype`` for measurements)."""
        from ..compute.score_cache import save_scores
        from ..compute.score_model import score_model

        c = self.cfg
        inputs = self._score_inputs(model_key, tokens, dtype)
        compute = compute or (lambda: score_model(
            str(model_path), tokens, score_config=c.score, device=c.run.device, dtype=dtype or c.run.dtype,
            trust_remote_code=c.run.trust_remote_code, cache=cache and self.cache,
            work_dir=self.work_dir(name, inputs)))

        def fn(tmp: Path) -> dict[str, Any]:
            scores = compute()
            save_scores(scores, tmp)
            return scores.meta

        self.stage(name, inputs, fn)
        return Scores.load(self.path(name))

    def select_stage(self, name: str, base: Scores, ref: Scores, inputs: dict[str, Any],
                     config: SelectConfig | None = None, prompt_free: Scores | None = None) -> Selection:
        """Select from two ``Scores`` (``inputs`` identifies them: their stage keys; a prompt scorer's
        ``prompt_free`` scores too)."""
        from ..selection.from_scores import select_scores

        config = config or self.cfg.select

        def build(tmp: Path) -> dict[str, Any]:
            selection = select_scores(base, ref, config, prompt_free)
            selection.save(tmp)
            return selection.meta

        self.stage(name, {**inputs, "select_config": asdict(config)}, build, complete=Selection.has_score)
        return Selection.load(self.path(name))

    def prompt_free_stage(self, name: str, model_key: str, model_path: str | Path, tokens: TokenTable) -> Scores:
        """The losses of ``tokens``' response tokens under ``model_path`` with their prompts removed
        (``compute.prompt_free``), mapped back onto ``tokens`` (NaN at prompt tokens and a span's first token when
        the tokenizer has no BOS): what the prompt scorers compare with the reference's ordinary losses."""
        from ..compute.prompt_free import start_token_id
        from ..compute.score_model import score_model_prompt_free

        c = self.cfg

        def compute() -> Scores:
            return score_model_prompt_free(str(model_path), tokens, self.tokenizer, score_config=c.score,
                                           device=c.run.device, dtype=c.run.dtype,
                                           trust_remote_code=c.run.trust_remote_code)

        key = f"{model_key}:prompt-free:{start_token_id(self.tokenizer)}"
        return self.score_stage(name, key, model_path, tokens, compute=compute)

    def mask_stage(self, name: str, tokens: TokenTable, inputs: dict[str, Any],
                   make: Callable[[], tuple[np.ndarray, np.ndarray, dict[str, Any]]]) -> Selection:
        """Save the keep-mask and the score it ranked by, ``make() -> (mask, score, counts)`` over ``tokens``, as a
        ``Selection`` stage, for methods whose mask does not come from ``select_stage`` (random, self-evolving's
        union of rounds)."""
        def build(tmp: Path) -> dict[str, Any]:
            mask, score, counts = make()
            Selection(tokens.sample_ids, mask, tokens.offsets, {**TokenOrigin.of(tokens.meta).meta(), **counts},
                      score).save(tmp)
            return counts

        self.stage(name, {**inputs, "tokens": tokens.meta["tokens_fingerprint"]}, build, complete=Selection.has_score)
        return Selection.load(self.path(name))

    def export_stage(self, name: str, tokens: TokenTable, keep: tuple[str, np.ndarray] | None) -> dict[str, Any]:
        """Export ``tokens`` with ``keep`` = (key, mask), or all response tokens."""
        from ..compute.export import export_dataset

        inputs = {"tokens": tokens.meta["tokens_fingerprint"], "keep": keep and keep[0],
                  "drop_empty": self.cfg.select.drop_empty}
        return self.stage(name, inputs, lambda tmp: export_dataset(
            tokens, tmp, keep[1] if keep else None, self.cfg.select.drop_empty,
            parquet_path=tmp / EXPORT_PARQUET))

    def base_scores(self, pool: TokenTable) -> Scores:
        """The base model's losses over the whole pool: computed once, shared by every method and seed, and
        taken from (or stored in) the score cache, so other run directories over the same base, tokenizer and
        data reuse them."""
        return self.score_stage(BASE_SCORES, self.base_fingerprint, self.cfg.run.base, pool, cache=True)

    def reference_model(self, tables: dict[str, TokenTable]) -> Path:
        """The warm-up reference: the base trained on all response tokens of the warm-up set. With ``--lora``
        its unmerged adapter is kept in ``adapter/`` as well, for ``base_and_reference``."""
        warmup = self.warmup_split(tables)
        return self.train_stage(self.layout.reference, self.base_fingerprint, self.cfg.run.base, warmup,
                                save_adapter=self.cfg.train.lora, train_config=self.warmup_train_config(warmup))

    def reference(self, tables: dict[str, TokenTable]) -> tuple[Path, Scores]:
        """The warm-up reference model and its losses over the pool."""
        ref = self.reference_model(tables)
        at = self.layout
        return ref, self.score_stage(at.reference_scores, self.key(at.reference), ref, tables["pool"])

    def base_and_reference(self, tables: dict[str, TokenTable]) -> tuple[Scores, Scores]:
        """The base model's and the warm-up reference's losses over the pool (stages ``scores/base`` and
        ``scores/reference``, the same keys and files however they are computed).

        When the reference is a LoRA adapter on the base (``--lora``, the default) and neither stage is done, one
        model is loaded instead of two: the base is scored with the adapter off, then the reference with it
        merged (``compute.score_model.score_model_pair``; cached base losses are reused); the losses equal the two-model path's up to
        float rounding. Otherwise (and under FSDP, whose sharded weights cannot take a merge) each is scored with its
        own model (the base through the score cache)."""
        c, pool = self.cfg, tables["pool"]
        ref = self.reference_model(tables)
        names = (BASE_SCORES, self.layout.reference_scores)
        models = (self.base_fingerprint, self.key(self.layout.reference))
        adapter = self.path(Layout.adapter(self.layout.reference))
        if (not adapter.is_dir() or fsdp_requested()
                or any(self.up_to_date(n, self._score_inputs(m, pool)) for n, m in zip(names, models))):
            return self.base_scores(pool), self.score_stage(names[1], models[1], ref, pool)
        from ..compute.score_model import score_model_pair

        pair: list[Scores] = []
        work = {n: self._score_inputs(m, pool) for n, m in zip(names, models)}

        def compute(i: int) -> Scores:  # both scored on first use, with one model load
            if not pair:
                pair.extend(score_model_pair(c.run.base, adapter, pool, score_config=c.score,
                                             device=c.run.device, dtype=c.run.dtype,
                                             trust_remote_code=c.run.trust_remote_code, cache=self.cache,
                                             work_dir=self.work_dir(self.layout.pair_scores, work)))
            return pair[i]

        scores = (self.score_stage(names[0], models[0], c.run.base, pool, compute=lambda: compute(0)),
                  self.score_stage(names[1], models[1], ref, pool, compute=lambda: compute(1)))
        self.discard_work(self.layout.pair_scores)
        return scores

    def heldout_stage(self, model_stage: str, tables: dict[str, TokenTable]) -> float | None:
        """Mean loss of the held-out response tokens under the model of stage ``model_stage``, with its weights in
        ``--eval-dtype`` (None without held-out data). The mean divides by the number of held-out response tokens."""
        if "eval" not in tables:
            return None
        name = Layout.next_to(model_stage, "heldout")
        return self.score_stage(name, self.key(model_stage), self.path(model_stage), tables["eval"],
                                dtype=self.cfg.run.eval_dtype).meta["mean_token_loss"]

    # -- bookkeeping -----------------------------------------------------------------------------------------------
    def write_config(self, ignore: tuple[str, ...] = ()) -> None:
        """Save the settings as ``config.yaml`` (``store.write_config``: a directory holding a run of other settings
        is refused without ``--overwrite``)."""
        write_config(self.dir, self.cfg.flat(), RunConfig().flat(), self.cfg.run.overwrite, ignore,
                     renamed_settings(*RunConfig.SECTIONS.values()))

    def write_summary(self, extra: MethodSummary) -> MethodSummary:
        """``extra`` (what the method returned) with the run's bookkeeping fields, written to ``summary.json``."""
        summary: MethodSummary = {
            "method": self.cfg.run.method,
            "seed": self.cfg.run.seed,
            "run_dir": str(self.dir / self.layout.ns) if self.layout.ns else str(self.dir),
            "versions": library_versions(),
            "compute": self.compute_facts(),
            "base_model": self.base_model_record(),
            **extra,
            "seconds": round(sum(rec.get("seconds") or 0 for rec in self.stages.values()), 3),
            "stages": {name: {"seconds": rec.get("seconds"), "key": rec["key"]} for name, rec in self.stages.items()},
        }
        write_json(self.layout.summary, summary)
        return summary


def library_versions() -> dict[str, Any]:
    """Versions of Python and the libraries that decide a run's numbers, and torch's CPU thread count."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions: dict[str, Any] = {"python": platform.python_version()}
    for name in ("tokenclean", "torch", "transformers", "peft", "datasets", "numpy", "pyarrow", "accelerate"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    versions["torch_cuda"] = torch.version.cuda
    versions["torch_threads"] = torch.get_num_threads()
    return versions


def _counts(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("samples", "tokens", "response_tokens", "truncated_samples", "no_response")}
