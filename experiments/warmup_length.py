"""Warm-up length and score health: how far must the reference move before its scores mean something?

One LoRA warm-up of the base on the warm-up split, with the adapter saved at several optimizer steps; each saved
reference scores the pool and the held-out rows (``tokenclean.score_pair``), and ``tokenclean.selection.health`` measures
the scores. A second seed gives a second, independent reference: how much two references' selections agree is
the ground truth that the diagnostic is checked against. Every stage writes under ``--out`` and is skipped when
its output is there, so a killed run resumes.

    python experiments/warmup_length.py --base /tmp/smollm2 --out /tmp/warmup-study/run --seeds 0 --floor-rows 10

Split (seeded, as ``tokenclean run`` does): ``--rows`` rows of ``--data`` -> ``--eval-fraction`` held out, then
``--warmup-fraction`` of the rest for the warm-up, the remainder is the scored pool.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from tokenclean.compute import training
from tokenclean.api import prepare_tokens, score_pair, train
from tokenclean.compute.modeling import load_tokenizer
from tokenclean.core.tokens import TokenizeConfig
from tokenclean.compute.training import TrainConfig

log = logging.getLogger("warmup_length")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True)
    p.add_argument("--data", default="../shared/data/sft/gsm8k_train.jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--warmup-fraction", type=float, default=0.2)
    p.add_argument("--max-seq-len", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--save-at", type=int, nargs="+", default=[2, 5, 10, 25, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--score-pool-rows", type=int, default=60, help="score only this many pool rows (time)")
    p.add_argument("--score-eval-rows", type=int, default=20, help="score only this many held-out rows (time)")
    p.add_argument("--keep-ratio", type=float, default=0.6)
    p.add_argument("--stage", choices=["all", "score", "analyze"], default="all",
                   help="score: score the adapters saved so far (alongside a training in progress)")
    p.add_argument("--floor-rows", type=int, default=20, help="rows scored in bf16 to measure the noise floor")
    return p.parse_args()


def subset(args: argparse.Namespace, out: Path) -> Path:
    """A seeded sample of ``--rows`` rows of ``--data`` written to ``out/rows.jsonl`` (scratch, not the repo)."""
    path = out / "rows.jsonl"
    if not path.exists():
        lines = Path(args.data).read_text(encoding="utf-8").splitlines()
        pick = np.sort(np.random.default_rng(0).permutation(len(lines))[:args.rows])
        path.write_text("".join(lines[i] + "\n" for i in pick), encoding="utf-8")
    return path


def splits(tokens, args) -> dict[str, np.ndarray]:
    """Sample indices of the held-out, warm-up and pool splits (seed 0, fixed across reference seeds); the
    held-out and pool splits cut to the rows that are scored."""
    order = np.random.default_rng(0).permutation(len(tokens))
    n_eval = int(round(args.eval_fraction * len(tokens)))
    rest = order[n_eval:]
    n_warm = int(round(args.warmup_fraction * len(rest)))
    pool, held_out = np.sort(rest[n_warm:]), np.sort(order[:n_eval])
    return {"eval": held_out[:args.score_eval_rows], "warmup": np.sort(rest[:n_warm]),
            "pool": pool[:args.score_pool_rows]}


def save_adapters_at(steps: set[int], where: Path):
    """Wrap ``training.route_trainer_logs`` so the Trainer also saves the LoRA adapter after each step in
    ``steps`` (the library keeps only its newest checkpoint)."""
    from transformers import TrainerCallback

    original = training.route_trainer_logs

    class SaveAdapter(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in steps:
                model.save_pretrained(where / f"step-{state.global_step}")

    def routed(trainer):
        original(trainer)
        trainer.add_callback(SaveAdapter)

    training.route_trainer_logs = routed


def warm_up(args, base: str, tokens, seed: int, out: Path) -> dict:
    done = out / "trained.json"
    if done.exists():
        return json.loads(done.read_text())
    save_adapters_at(set(args.save_at), out / "adapters")
    cfg = TrainConfig(batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
                      max_steps=args.max_steps, save_steps=10_000)
    start = time.perf_counter()
    result = train(base, tokens, out / "model", train_config=cfg, seed=seed, device="cpu")
    result["wall_s"] = time.perf_counter() - start
    done.write_text(json.dumps(result, indent=1))
    return result


def score_step(base: str, tokens, adapter: Path, out: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(base losses, reference losses) over ``tokens``, read back from ``out`` when scored before."""
    from tokenclean.core.artifacts import Scores

    if not (out / "ref" / "scores.json").exists():
        start = time.perf_counter()
        score_pair(base, adapter, tokens, out / "base", out / "ref", device="cpu", dtype="float32", cache=cache,
                   progress=False)
        log.info("scored %s in %.0fs", adapter, time.perf_counter() - start)
    return Scores.load(out / "base").token_loss, Scores.load(out / "ref").token_loss


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.base)
    tokens, report = prepare_tokens(subset(args, out), tok,
                                    tokenize_config=TokenizeConfig(max_seq_len=args.max_seq_len))
    parts = splits(tokens, args)
    scored = tokens.select(np.concatenate([parts["pool"], parts["eval"]]))
    n_pool = len(parts["pool"])
    meta = {"rows": report.rows, "truncated": report.truncated, **{k: len(v) for k, v in parts.items()}}
    (out / "split.json").write_text(json.dumps(meta))
    for seed in args.seeds:
        run = out / f"seed-{seed}"
        if args.stage == "all":
            log.info("seed %d: %s", seed, warm_up(args, args.base, tokens.select(parts["warmup"]), seed, run))
        for step in args.save_at:
            ready = {"all": True, "score": (run / "adapters" / f"step-{step}" / "adapter_model.safetensors").exists(),
                     "analyze": (run / f"scores-{step}" / "ref" / "scores.json").exists()}[args.stage]
            if ready:
                score_step(args.base, scored, run / "adapters" / f"step-{step}", run / f"scores-{step}",
                           out / "cache")
    if args.stage != "score":
        analyze(args, out, scored, n_pool, noise_floor(args, out, scored))


def noise_floor(args, out: Path, scored) -> dict:
    """How much scoring in bf16 (the default on a GPU) moves the base's losses against fp32: the size of a
    score difference that precision alone produces. Over the response tokens of the first ``--floor-rows`` rows."""
    from tokenclean.api import score

    path = out / "noise_floor.json"
    if path.exists():
        return json.loads(path.read_text())
    fp32_dir = next(out.glob("seed-*/scores-*/base"))
    from tokenclean.core.artifacts import Scores

    rows = scored.select(np.arange(args.floor_rows))
    end = rows.offsets[-1]
    fp32 = Scores.load(fp32_dir).token_loss[:end]
    bf16 = score(args.base, rows, device="cpu", dtype="bfloat16", progress=False).token_loss
    used = rows.flat_response_mask() & np.isfinite(fp32) & np.isfinite(bf16)
    diff = np.abs(bf16[used].astype(np.float64) - fp32[used])
    result = {"rows": args.floor_rows, "tokens": int(used.sum()), "mean_fp32_loss": float(fp32[used].mean()),
              **{f"abs_diff_q{q}": float(np.quantile(diff, q / 100)) for q in (10, 25, 50, 75, 90, 99)},
              "abs_diff_mean": float(diff.mean())}
    path.write_text(json.dumps(result, indent=1))
    return result


def analyze(args, out: Path, scored, n_pool: int, floor: dict) -> None:
    """One row per (seed, step): health of the pool's scores, held-out losses, agreement with other references."""
    from tokenclean.selection.health import score_health, selection_agreement
    from tokenclean.selection.select import SelectConfig, select_tokens

    offsets = scored.offsets
    pool_end = offsets[n_pool]
    mask = scored.flat_response_mask()
    sel: dict[tuple[int, int], np.ndarray] = {}
    rows = []
    for seed in args.seeds:
        for step in args.save_at:
            d = out / f"seed-{seed}" / f"scores-{step}"
            if not (d / "ref" / "scores.json").exists():
                continue
            base, ref = score_step(args.base, scored, d.parent / "adapters" / f"step-{step}", d, out / "cache")
            h = score_health(base[:pool_end] - ref[:pool_end], base[:pool_end], ref[:pool_end], mask[:pool_end],
                             offsets[:n_pool + 1], args.keep_ratio)
            ev = mask[pool_end:] & np.isfinite(base[pool_end:])
            row = {"seed": seed, "step": step, **h.to_dict(),
                   "eval_base_loss": float(base[pool_end:][ev].mean()),
                   "eval_ref_loss": float(ref[pool_end:][ev].mean())}
            sel[seed, step] = select_tokens(base[:pool_end] - ref[:pool_end], offsets[:n_pool + 1],
                                            SelectConfig(keep_ratio=args.keep_ratio))[0]
            rows.append(row)
    for row in rows:
        final = max(s for (sd, s) in sel if sd == row["seed"])
        row["agree_with_final"] = selection_agreement(sel[row["seed"], row["step"]], sel[row["seed"], final],
                                                      mask[:pool_end])
        other = [sd for (sd, s) in sel if s == row["step"] and sd != row["seed"]]
        row["agree_other_seed"] = (selection_agreement(sel[row["seed"], row["step"]], sel[other[0], row["step"]],
                                                       mask[:pool_end]) if other else None)
    (out / "results.json").write_text(json.dumps({"noise_floor": floor, "rows": rows}, indent=1, default=str))
    print(json.dumps(floor))
    print(markdown_table(rows))


def markdown_table(rows: list[dict]) -> str:
    """The README's table: one line per (seed, step)."""
    head = ("| seed | step | mean ref loss | relative_move | score q10 / q50 / q90 | below_floor | threshold | "
            "undecided | undecided loss | split_half | kappa vs last step | kappa vs other seed | held-out loss | "
            "verdict |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        q = r["score_quantiles"]
        other = "" if r["agree_other_seed"] is None else f"{r['agree_other_seed']:.2f}"
        lines.append(f"| {r['seed']} | {r['step']} | {r['mean_ref_loss']:.4f} | {r['relative_move']:.2%} | "
                     f"{q['q10']:.4f} / {q['q50']:.4f} / {q['q90']:.4f} | {r['below_floor_share']:.1%} | "
                     f"{r['threshold']:.5f} | {r['undecided_share']:.1%} | {r['undecided_loss_share']:.1%} | "
                     f"{r['split_half']:.2f} | "
                     f"{r['agree_with_final']:.2f} | {other} | {r['eval_ref_loss']:.4f} | {r['verdict']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
