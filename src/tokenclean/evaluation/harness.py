"""Run the benchmark suite through lm-evaluation-harness (``lm_eval``, an optional extra imported lazily).

    >>> results = evaluate("runs/fixed/model", ["arc_challenge", "gsm8k"],
    ...                    data_dir="../shared/data/eval", limit=20)  # doctest: +SKIP
    >>> results["tasks"]["arc_challenge"]
    {'metric': 'acc', 'value': 0.25, 'n': 20, 'num_fewshot': 0}
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, TokencleanError
from ..evaluation import local_tasks
from .benchmarks import (DEFAULT_TASKS, Benchmark, Limit, average_stderr, combine, combine_stderr, limits_for,
                         parse_tasks)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("tokenclean")
BOOTSTRAP_ITERS = 1000
"""Resamples for the harness's standard errors of metrics without a closed form. Accuracy, MC2 and exact match are
means, whose standard error the harness computes in closed form (lm_eval's ``mean_stderr``) whatever this number
is; 0 would turn every standard error off."""
CPU_BATCH_SIZE = 1
"""Default harness batch size on a CPU. The harness holds a batch's logits (rows x tokens x vocabulary) in fp32
several times over, and a 5-shot MMLU prompt runs to thousands of tokens. Measured on SmolLM2-135M (49k vocabulary):
MMLU 5-shot peaked at 10.5 GB RSS with batches of 8; ARC-Challenge + BoolQ (10 questions each) + MMLU (1 per
subject) at 3.5-3.7 GB with batches of 2 and 2.44 GB with 1, in the same time (37.4 s at 2, 38.6 s at 1: a CPU
gains nothing from wider batches once a row fills its cores). Scores move only by float rounding (another matmul
shape): near-ties may flip."""
CUDA_BATCH_SIZE = 8
"""Default harness batch size on a GPU, where wider batches are faster and the memory is the GPU's."""
INSTALL_HINT = "evaluation needs lm-evaluation-harness: pip install 'tokenclean[eval]'"


def evaluate(
    model: str | os.PathLike | PreTrainedModel,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    *,
    limit: Limit = None,
    data_dir: str | os.PathLike | None = None,
    batch_size: int | str | None = None,
    device: str | None = None,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
    max_gen_toks: int | None = None,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Evaluate a causal LM on benchmarks and return one value in [0, 1] per benchmark plus their mean.

    Args:
        model: a model directory (or hub id), or a loaded ``PreTrainedModel`` (then ``tokenizer`` is required).
        tasks: benchmark names (``benchmarks.BENCHMARKS``, or ``mmlu_<subject>``), as a list or "a,b,c".
        limit: at most this many questions per harness task, i.e. per MMLU subject and per TyDi QA language; one
            number for all, or per benchmark (``{"default": 100, "mmlu": 2}``; ``benchmarks.Limit``).
        data_dir: read local files (the layouts of ``shared/data/eval``) through the packaged task definitions,
            with the network off; ``None`` runs the harness's standard hub tasks.
        batch_size: harness batch size, or ``"auto"``; default: ``CPU_BATCH_SIZE`` on a CPU (memory-bounded),
            ``CUDA_BATCH_SIZE`` elsewhere.
        device: ``"cpu"``, ``"cuda"``...; default: the loaded model's device, else CUDA when available.
        tokenizer: a tokenizer or its directory; default: the model directory. A tokenizer without a pad token is
            used through a copy whose pad token is its end-of-text token.
        max_gen_toks: cap on generated tokens for the generation tasks (GSM8K, TyDi QA), for quick runs.
        dtype: weights dtype of a model loaded from a directory (``compute.modeling.resolve_dtype``): ``auto`` is
            bf16 where the device computes it natively, fp32 elsewhere (``hardware.auto_dtype``). Log-probabilities
            are always computed in fp32 (the harness's ``softmax_dtype``). A loaded model keeps its own dtype.

    Returns:
        ``{"model", "tasks": {name: {"metric", "value", "stderr", "n", "num_fewshot"[, "parts"]}}, "average",
        "average_stderr", "dtype", ...}`` where ``stderr`` is the harness's standard error of ``value`` (``None``
        where it has none), ``n`` counts questions, ``parts`` holds per-subject / per-language values and ``average`` is
        the unweighted mean of the task values.
    """
    benchmarks = parse_tasks(tasks)
    limits = limits_for(benchmarks, limit)
    _check_settings(model, data_dir, max_gen_toks)
    lm_eval = _import_harness()
    started = time.time()
    harness_tasks, output, weights_dtype = _run_harness(
        lm_eval, model, tokenizer, benchmarks, limits=limits, data_dir=data_dir, batch_size=batch_size,
        device=device, max_gen_toks=max_gen_toks, dtype=dtype)
    task_results = {b.name: _benchmark_result(b, harness_tasks[b.name], output, data_dir) for b in benchmarks}
    return {
        "model": _model_name(model),
        "tasks": task_results,
        "average": sum(r["value"] for r in task_results.values()) / len(task_results),
        "average_stderr": average_stderr([r["stderr"] for r in task_results.values()]),
        "limit": limit,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "dtype": weights_dtype,
        "lm_eval_version": lm_eval.__version__,
        "seconds": round(time.time() - started, 1),
    }


def evaluate_in_child(model: str | os.PathLike, tasks: str | Sequence[str] = DEFAULT_TASKS,
                      **settings: Any) -> dict[str, Any]:
    """``evaluate(model, tasks, **settings)`` in a child process (a fresh interpreter), so that what the harness
    holds (its copy of the model, datasets, request caches) is returned to the system when the child ends, instead
    of staying in a long-running process such as ``compare`` (which peaked near 16 GB doing it in one process).
    ``model``: a directory (a loaded model cannot be handed to another process). The child logs at this process's
    level; its errors are raised here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")  # not fork: a forked child would share the parent's pages
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=_child_setup,
                             initargs=(log.getEffectiveLevel(),)) as child:
        return child.submit(evaluate, str(model), tasks, **settings).result()


def _child_setup(level: int) -> None:
    """In the evaluating child: log as the parent does, and on Linux end when the parent ends (killed too), so a
    stopped ``compare`` leaves no harness running."""
    logging.basicConfig(level=level, format="%(message)s")
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the child ends after its evaluation instead
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _run_harness(lm_eval: Any, model: Any, tokenizer: Any, benchmarks: list[Benchmark], *,
                 limits: dict[str, int | None], data_dir: str | os.PathLike | None, batch_size: int | str | None,
                 device: str | None, max_gen_toks: int | None,
                 dtype: str) -> tuple[dict[str, list], dict[str, Any], str]:
    """Load the benchmarks' harness tasks, then the model, and run them, one harness call per distinct limit:
    (harness tasks per benchmark, the harness's ``simple_evaluate`` outputs' ``results`` and ``n-samples``, the
    model's weights dtype, e.g. ``"bfloat16"``)."""
    with tempfile.TemporaryDirectory(prefix="tokenclean-eval-") as work_dir:
        # Tasks first: bad data or an unknown task fails before any model loads.
        log.info("loading %s from %s", ", ".join(b.name for b in benchmarks), data_dir or "the Hugging Face hub")
        task_manager, harness_tasks = _load_tasks(benchmarks, data_dir, Path(work_dir), max_gen_toks)
        log.info("loading model %s", _model_name(model))
        lm = _harness_model(model, tokenizer, device, batch_size, dtype)
        output: dict[str, Any] = {"results": {}, "n-samples": {}}
        for limit in dict.fromkeys(limits.values()):
            tasks = [task for b in benchmarks if limits[b.name] == limit for task in harness_tasks[b.name]]
            log.info("running %d harness tasks, limit=%s questions per task", len(tasks), limit)
            with _offline(data_dir is not None):
                part = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, limit=limit,
                                               bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False)
            for key in output:
                output[key].update(part[key])
    return harness_tasks, output, str(lm.model.dtype).removeprefix("torch.")


def _check_settings(model: Any, data_dir: str | os.PathLike | None, max_gen_toks: int | None) -> None:
    if isinstance(model, (str, os.PathLike)) and _looks_like_path(model) and not Path(model).is_dir():
        raise ConfigError(f"model directory {model} not found")
    if max_gen_toks is not None and max_gen_toks < 1:
        raise ConfigError(f"max_gen_toks must be positive, got {max_gen_toks}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ConfigError(f"evaluation data directory {data_dir} not found")


def _looks_like_path(model: str | os.PathLike) -> bool:
    """A path rather than a hub id such as ``org/name``: absolute, relative with dots, or existing."""
    text = str(model)
    return Path(text).is_absolute() or text.startswith((".", "~")) or Path(text).exists()


def _import_harness() -> Any:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401 - fail here, not after the tasks are built
    except ImportError:
        raise TokencleanError(INSTALL_HINT) from None
    return lm_eval


def _load_tasks(
    benchmarks: list[Benchmark], data_dir: str | os.PathLike | None, work_dir: Path, max_gen_toks: int | None
) -> tuple[Any, dict[str, list[Any]]]:
    """Harness task objects per benchmark, with the benchmark's few-shot count and generation cap applied."""
    from lm_eval.tasks import TaskManager

    if data_dir is not None:
        task_manager = TaskManager(include_defaults=False)
        with _offline(True):
            loaded = {b.name: _load(task_manager, local_tasks.task_configs(b, data_dir, work_dir)) for b in benchmarks}
    else:
        task_manager = TaskManager()
        loaded = {b.name: _load_hub(task_manager, b) for b in benchmarks}
    for benchmark in benchmarks:
        for task in loaded[benchmark.name]:
            task.set_config(key="num_fewshot", value=benchmark.num_fewshot)
            if max_gen_toks is not None and task.get_config("output_type") == "generate_until":
                task.set_config(key="generation_kwargs", value={"max_gen_toks": max_gen_toks}, update=True)
    return task_manager, loaded


def _load(task_manager: Any, specs: list[Any]) -> list[Any]:
    return list(task_manager.load(specs)["tasks"].values())


def _load_hub(task_manager: Any, benchmark: Benchmark) -> list[Any]:
    try:
        return _load(task_manager, [benchmark.hub_task])
    except KeyError:
        raise ConfigError(f"lm-evaluation-harness has no task {benchmark.hub_task!r}") from None
    except (OSError, ConnectionError) as e:  # datasets raises these when the hub cannot be reached
        raise TokencleanError(
            f"could not load {benchmark.hub_task!r} from the Hugging Face hub ({type(e).__name__}); "
            "pass --data-dir to read local files"
        ) from e


def _harness_model(
    model: str | os.PathLike | PreTrainedModel,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None,
    device: str | None,
    batch_size: int | str | None,
    dtype: str = "auto",
) -> Any:
    """lm_eval's ``HFLM`` around the model, on ``device`` (a directory's weights in ``dtype``), with a tokenizer
    that has a pad token, taking log-probabilities in fp32 whatever the weights' dtype."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..compute.modeling import resolve_dtype, resolve_model_source

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = resolve_model_source(tokenizer)  # a GGUF source: its converted directory
    if isinstance(model, (str, os.PathLike)):
        model = resolve_model_source(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = tokenizer if tokenizer is not None else model
        try:
            model = AutoModelForCausalLM.from_pretrained(model, dtype=resolve_dtype(dtype, torch.device(device)),
                                                         use_safetensors=True)  # never unpickle .bin weights
        except (OSError, ValueError) as e:
            raise TokencleanError(f"cannot load a causal language model from {model}: {e}") from None
    elif tokenizer is None:
        raise ConfigError("evaluating a model object needs its tokenizer (tokenizer=...)")
    if isinstance(tokenizer, (str, os.PathLike)):
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as e:
            raise TokencleanError(f"cannot load a tokenizer from {tokenizer} (pass --tokenizer): {e}") from None
    if device is not None:
        model.to(device)
    model.eval()
    if batch_size is None:
        batch_size = CPU_BATCH_SIZE if model.device.type == "cpu" else CUDA_BATCH_SIZE
    return HFLM(pretrained=model, tokenizer=_with_pad_token(tokenizer), batch_size=batch_size,
                softmax_dtype=torch.float32)


def _with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer itself if it has a pad token, else a copy padding with end-of-text (the caller's is untouched)."""
    if tokenizer.pad_token is not None:
        return tokenizer
    if tokenizer.eos_token is None:
        raise ConfigError("the tokenizer has neither a pad token nor an end-of-text token to pad with")
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _benchmark_result(
    benchmark: Benchmark, tasks: list[Any], output: dict[str, Any], data_dir: str | os.PathLike | None
) -> dict[str, Any]:
    """Combine the harness values of a benchmark's tasks into ``{"metric", "value", "n", "num_fewshot"[, "parts"]}``."""
    filter_name = "none" if data_dir is not None else benchmark.hub_filter
    key = f"{benchmark.harness_metric},{filter_name}"
    names = [task.task_name for task in tasks]
    values = [float(output["results"][name][key]) for name in names]
    stderrs = [_stderr(output["results"][name], benchmark.harness_metric, filter_name) for name in names]
    sizes = [int(output["n-samples"][name]["effective"]) for name in names]
    result = {
        "metric": benchmark.metric,
        "value": combine(benchmark, values, sizes),
        "stderr": combine_stderr(benchmark, stderrs, sizes),
        "n": sum(sizes),
        "num_fewshot": benchmark.num_fewshot,
    }
    if len(names) > 1:
        result["parts"] = dict(zip(names, values, strict=True))
    return result


def _stderr(task_output: dict[str, Any], metric: str, filter_name: str) -> float | None:
    """The harness's standard error of a task's metric; ``None`` where it has none ("N/A", e.g. one question)."""
    value = task_output.get(f"{metric}_stderr,{filter_name}")
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _model_name(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return getattr(model.config, "_name_or_path", "") or type(model).__name__


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Keep the Hugging Face libraries off the network while local tasks load and run.

    The libraries read their offline switches when first imported, so the module flags are set as well as the
    environment variables; all are restored afterwards.
    """
    if not enabled:
        yield
        return
    import datasets
    import huggingface_hub

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(os.environ, {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}))
        stack.enter_context(_patched(vars(datasets.config), {"HF_HUB_OFFLINE": True, "HF_DATASETS_OFFLINE": True}))
        stack.enter_context(_patched(vars(huggingface_hub.constants), {"HF_HUB_OFFLINE": True}))
        yield


@contextlib.contextmanager
def _patched(mapping: Any, values: dict[str, Any]) -> Iterator[None]:
    missing = object()
    saved = {key: mapping.get(key, missing) for key in values}
    mapping.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is missing:
                mapping.pop(key, None)
            else:
                mapping[key] = value
