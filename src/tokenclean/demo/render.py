"""The demo's words: the conclusion computed from its numbers, the time per stage, and the printed output."""

from __future__ import annotations

from typing import Any

from .metrics import DEMO_COLUMNS, KNOWN_LOSS

# issue 13's targets for fixed-model selection with the clean warm-up: (metric, at least, what)
SELECTION_TARGETS = (("garbled_dropped", 0.90, "of garbled tokens dropped"),
                     ("generic_dropped", 0.80, "of generic tokens dropped"),
                     ("informative_kept", 0.85, "of informative tokens kept"))  # fmt: skip


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def conclude(result: dict[str, Any], world: bool) -> list[str]:
    """Sentences computed from the numbers: does fixed-model cleaning beat full and random seed by seed (loss and
    accuracy), a plain verdict with the measured reasons when it does not, which method is best on each measure,
    what the selection kept and dropped against the targets, the score health, and what each ablation changed."""
    per = {(r["method"], r["seed"]): r["metrics"] for r in result["runs"]}
    means = {r["method"]: r["mean"] for r in result["rows"]}
    seeds, methods = result["seeds"], result["methods"]
    key, what = ("informative_loss", "loss on informative tokens") if world else ("heldout_loss", "loss")
    lines, lost = [], []
    if "fixed" in methods:
        for other in ("full", "random"):
            if other not in methods:
                continue
            wins = sum(per[("fixed", s)][key] < per[(other, s)][key] for s in seeds)
            line = (f"Fixed-model cleaning reached a lower held-out {what} than {other} in {wins} of "
                    f"{_seeds(len(seeds))} ({means['fixed'][key]:.3f} vs {means[other][key]:.3f} on average)")
            majority = wins * 2 > len(seeds)
            if all("accuracy" in per[(m, s)] for m in ("fixed", other) for s in seeds):
                acc = sum(per[("fixed", s)]["accuracy"] > per[(other, s)]["accuracy"] for s in seeds)
                line += (f" and a higher greedy accuracy in {acc} of {len(seeds)} ({means['fixed']['accuracy']:.1%} "
                         f"vs {means[other]['accuracy']:.1%})")
                majority = majority and acc * 2 > len(seeds)
            lines.append(line + ".")
            if not majority:
                lost.append(other)
        if lost:
            lines.append(f"Verdict: fixed-model cleaning does not beat {' or '.join(lost)} here. "
                         + " ".join(_reasons(result, means["fixed"], world)))
        elif any(m in methods for m in ("full", "random")):
            lines.append("Verdict: fixed-model cleaning beats full and random here in most seeds, on both measures.")
    paired = (result.get("intervals") or {}).get("paired", {})
    lines += [_paired_line(other, paired[f"fixed-{other}"], world) for other in ("full", "random")
              if f"fixed-{other}" in paired]
    best = min(methods, key=lambda m: means[m][key])
    lines.append(f"Lowest held-out {what}: {best} ({means[best][key]:.3f}).")
    if all("accuracy" in means[m] for m in methods):
        top = max(methods, key=lambda m: means[m]["accuracy"])
        versus = f"; full: {means['full']['accuracy']:.1%}" if "full" in methods and top != "full" else ""
        lines.append(f"Highest greedy accuracy on held-out prompts: {top} ({means[top]['accuracy']:.1%}{versus}).")
    if world and "fixed" in methods and "informative_kept" in means["fixed"]:
        lines.append(_selection_line("Fixed-model selection", means["fixed"]))
    lines += _health_lines(result, means)
    lines += _ablation_lines(result, means)
    return lines


def _paired_line(other: str, paired: dict[str, dict[str, float]], world: bool) -> str:
    """Fixed minus ``other`` on the same held-out prompts, each measure with its 95% paired bootstrap interval and
    what the interval says."""
    parts = []
    for key, what, fmt, better in (("informative_loss", "loss on informative tokens" if world else "loss", "{:+.3f}",
                                    -1), ("accuracy", "accuracy", "{:+.1%}", 1)):
        if key not in paired:
            continue
        p = paired[key]
        if p["lo"] > 0 or p["hi"] < 0:
            says = "fixed better" if (p["lo"] > 0) == (better > 0) else "fixed worse"
        else:
            says = "the interval includes 0: no difference shown"
        parts.append(f"{what} {fmt.format(p['diff'])} [{fmt.format(p['lo'])}, {fmt.format(p['hi'])}] ({says})")
    return f"Fixed minus {other}, on the same held-out prompts (95% paired bootstrap interval): {'; '.join(parts)}."


def _selection_line(who: str, m: dict[str, float]) -> str:
    parts = [f"{m[k]:.1%} {text} (target >= {target:.0%}: {'met' if m[k] >= target else 'not met'})"
             for k, target, text in SELECTION_TARGETS if k in m]
    if "wrong_answer_dropped" in m:
        parts.append(f"{m['wrong_answer_dropped']:.1%} of wrong-answer tokens dropped")
    return f"{who}: {', '.join(parts)}; {m['precision']:.1%} of the tokens it kept are informative."


def _reasons(result: dict[str, Any], fixed: dict[str, float], world: bool) -> list[str]:
    """What the numbers say about why cleaning did not win (each sentence only when its measurement shows it)."""
    reasons = []
    full_accuracy = next((r["mean"].get("accuracy") for r in result["rows"] if r["method"] == "full"), None)
    if full_accuracy is not None and full_accuracy < 0.3:
        reasons.append(f"Full SFT itself answers only {full_accuracy:.1%} of the held-out prompts: the tasks are not "
                       "learnt at this model size and fine-tune length, so accuracy cannot separate the methods.")
    if fixed.get("healthy", 1.0) < 1.0:
        reasons.append(f"Its scores were near noise in some seeds (the reference moved {fixed['reference_move']:.1%} "
                       "of the base loss): the warm-up was too weak to rank tokens.")
    if world and fixed.get("garbled_dropped", 1.0) < 0.5 and "score_garbled" in fixed:
        nan = float("nan")
        reasons.append(f"It kept {1 - fixed['garbled_dropped']:.1%} of the garbled tokens: the warm-up lowered their "
                       f"loss by {fixed['score_garbled']:.2f} nats on average, less than informative tokens' "
                       f"{fixed.get('score_informative', nan):.2f} but more than generic tokens' "
                       f"{fixed.get('score_generic', nan):.2f}, so most of them rank inside the kept share.")
    if world and fixed.get("informative_kept", 1.0) < 0.85:
        reasons.append(f"Its selection dropped {1 - fixed['informative_kept']:.1%} of the informative tokens, which "
                       "the model then never trained on.")
    known = _known_reason(result, fixed)
    if known:
        reasons.append(known)
    share = (result.get("pool_kinds") or {}).get("noise")
    if share is not None:
        reasons.append(f"Noise is {share:.1%} of the pool's response tokens, so full SFT trains on little of it.")
    spread = [r["std"].get("accuracy") for r in result["rows"] if r["method"] in ("fixed", "full")]
    if all(s is not None for s in spread) and len(result["seeds"]) > 1 and (full_accuracy or 0) >= 0.3:
        reasons.append(f"Seed-to-seed spread of accuracy: ±{max(spread):.1%} (fixed, full).")
    return reasons


def _known_reason(result: dict[str, Any], fixed: dict[str, float]) -> str | None:
    """Fixed against full on the held-out informative tokens the base already predicted and on the rest, when both
    were measured: what leaving the known tokens out of training cost and what it bought."""
    base = result.get("base_known_split") or {}
    full = next((r["mean"] for r in result["rows"] if r["method"] == "full"), {})
    known, new = "informative_loss_known", "informative_loss_new"
    if not all(k in d for d in (base, full, fixed) for k in (known, new)):
        return None

    def versus(key: str) -> str:
        return f"{'lower' if fixed[key] < full[key] else 'higher'} than full's ({fixed[key]:.3f} vs {full[key]:.3f}"

    text = (f"Split by what the base already predicted ({base['known_share']:.1%} of the held-out informative tokens "
            f"have base loss < {KNOWN_LOSS} nats): on the informative tokens new to the base, fixed's loss is "
            f"{versus(new)}); on those the base already predicted it is {versus(known)}; the base: "
            f"{base[known]:.3f})")
    if fixed[known] > base[known]:
        text += ": the tokens a selection leaves out of training got worse than before any fine-tuning"
    return text + "."


def _health_lines(result: dict[str, Any], means: dict[str, dict[str, float]]) -> list[str]:
    """Score health of every row that selects from a warm-up reference's scores."""
    n = len(result["seeds"])
    parts = [f"{m}: healthy in {round(v['healthy'] * n)} of {_seeds(n)} (the reference moved {v['reference_move']:.1%} "
             "of the base loss)" for m, v in means.items() if "healthy" in v]
    return [f"Score health: {'; '.join(parts)}."] if parts else []


def _ablation_lines(result: dict[str, Any], means: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    fixed = means.get("fixed", {})
    for a in result.get("ablations", []):
        m = means[a["name"]]
        versus = [f"{k.replace('_', ' ')} {m[k]:.1%} (clean warm-up: {fixed[k]:.1%})"
                  for k in ("garbled_dropped", "informative_kept", "accuracy") if k in m and k in fixed]
        lines.append(f"Ablation {a['name']} ({a['note']}): " + ", ".join(versus) + ".")
    return lines


_STAGE_GROUPS = (  # (stage name ends with, group); the first match wins
    ("scores/base", "score: base model"), ("heldout-base", "held-out loss"), ("scores/reference",
    "score: warm-up reference"), ("/reference", "train: warm-up reference"), ("/scores", "score: self-evolving rounds"),
    ("selection", "select"), ("heldout", "held-out loss"), ("accuracy-base", "generate answers"), ("export", "export"), ("accuracy", "generate answers"),
    ("benchmarks", "benchmarks"), ("tokens", "tokenize"),
)  # fmt: skip


def stage_group(name: str) -> str:
    """The line a stage's time is counted on: training per method, everything else by kind of work."""
    if name.endswith("model"):
        return f"train: {name.split('/')[1]}" if name.startswith("seed-") else "train"
    return next((group for end, group in _STAGE_GROUPS if name.endswith(end)), name)


def time_per_stage(stages: list[dict[str, Any]], steps: list[tuple[str, float]],
                   reused_steps: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Seconds spent in this call per group of work (pipeline stages grouped by ``stage_group``, then the demo's
    own steps), in order of first appearance. A group whose every stage was reused from an earlier call also gets
    ``computed_seconds``: what its stages took when they ran; so does a demo step in ``reused_steps`` (name ->
    seconds then)."""
    seconds: dict[str, float] = {name: 0.0 for name, _ in steps[:2]}  # data and pretraining come first
    ran: set[str] = set()  # groups with a stage that ran in this call
    # group -> {(run dir, stage): seconds when computed}: a stage entered again (methods share the tokens, the
    # reference...) counts once, an ablation directory's stage of the same name counts on its own
    earlier: dict[str, dict[tuple[str, str], float]] = {}
    for record in stages:
        group = stage_group(record["stage"])
        seconds[group] = seconds.get(group, 0.0) + record["seconds"]
        if record.get("reused"):
            earlier.setdefault(group, {})[(record.get("dir"), record["stage"])] = record["computed_seconds"]
        else:
            ran.add(group)
    for name, s in steps:
        seconds[name] = seconds.get(name, 0.0) + s
    computed = {group: sum(by_stage.values()) for group, by_stage in earlier.items() if group not in ran}
    computed |= reused_steps or {}
    return [{"stage": name, "seconds": round(s, 1)}
            | ({"computed_seconds": round(computed[name], 1)} if name in computed else {})
            for name, s in seconds.items()]


INTERVAL_KEYS = ("informative_loss", "accuracy")  # the measures with a bootstrap interval over held-out prompts
BASE_ROW = "base (before SFT)"
KIND_NAMES = {"generic": "generic", "informative": "informative", "garbled": "garbled", "wrong_answer": "wrong answers"}


def _cell(value: float, fmt: str, std: float | None = None, interval: dict[str, float] | None = None) -> str:
    cell = fmt.format(value) + (" ± " + fmt.format(std) if std is not None else "")
    if interval:
        cell += f" [{fmt.format(interval['lo'])}, {fmt.format(interval['hi'])}]"
    return cell


def demo_table(result: dict[str, Any]) -> str:
    """The demo's table: the base before SFT, then one row per method and ablation. A cell is the mean over seeds
    (± their standard deviation with several seeds); loss on informative tokens and accuracy also carry their 95%
    bootstrap interval over held-out prompts [lo, hi] (``demo.intervals``)."""
    shown = {c[0] for c in DEMO_COLUMNS} - ({"heldout_loss"} if "base_informative_loss" in result else set())
    columns = [c for c in result["columns"] if c[0] in shown]
    multi = len(result["seeds"]) > 1
    intervals = (result.get("intervals") or {}).get("rows", {})
    rows = [(BASE_ROW, result.get("base_row") or {}, {}, intervals.get("base", {}))]
    rows += [(r["method"], r["mean"], r["std"] if multi else {}, intervals.get(r["method"], {}))
             for r in result["rows"]]
    lines = [f"# Comparison ({_seeds(len(result['seeds']))}: {', '.join(map(str, result['seeds']))})", "",
             "| method | " + " | ".join(h for _, h, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, mean, std, interval in rows:
        cells = [_cell(mean[k], fmt, std.get(k), interval.get(k)) if k in mean else "" for k, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kind_loss_line(losses: dict[str, float]) -> str:
    """The base model's loss per kind of pool token, and whether generic phrasing is the lowest (the premise)."""
    parts = ", ".join(f"{KIND_NAMES[k]} {v:.2f}" for k, v in losses.items())
    lowest = min(losses, key=losses.get)
    verdict = ("generic phrasing is the lowest, as the paper assumes" if lowest == "generic" else
               f"generic phrasing is NOT the lowest ({KIND_NAMES[lowest]} is): the paper's premise does not hold for "
               "this base, so the selection has no reason to drop the generic tokens")
    return f"Base model's loss per kind of pool token before fine-tuning (nats per token): {parts}; {verdict}."


def sample_lines(samples: list[dict[str, Any]]) -> list[str]:
    """A few pool rows token by token: dropped tokens as [-text-], and each run of generic or noise tokens tagged
    {generic: ...} / {noise: ...} (informative text as is)."""
    lines: list[str] = []
    for sample in samples:
        kept = [t for t in sample["tokens"] if t[2]]
        head = f"{sample['sample_id']}"
        if sample["selection"]:
            head += f" ({sample['selection']} kept {len(kept)} of {len(sample['tokens'])} response tokens)"
        runs: list[list[Any]] = []
        for text, kind, keep in sample["tokens"]:
            if runs and runs[-1][1] == kind and runs[-1][2] == keep:
                runs[-1][0] += text
            else:
                runs.append([text, kind, keep])
        body = ""
        for text, kind, keep in runs:
            text = text.replace("\n", "\\n")
            piece = text if keep is not False else f"[-{text}-]"
            body += piece if kind == "informative" else "{" + kind + ": " + piece + "}"
        lines += [f"- {head}:", f"  {body}"]
    return lines


def render(result: dict[str, Any]) -> str:
    """The demo's output: the table, the base's loss per token kind, sample rows, the conclusion, the time per stage
    and the paths."""
    lines = [demo_table(result), ""]
    for split, load in (result.get("data") or {}).items():
        if load:
            skipped = "; ".join(f"{n} {reason}" for reason, n in load.get("skipped_by_reason", {}).items())
            lines.append(f"Data ({split}): {load['used']} of {load['rows']} rows used"
                         + (f", {load.get('truncated', 0)} truncated to max_seq_len" if load.get("truncated") else "")
                         + (f" (skipped: {skipped})" if skipped else "") + ".")
    lines.append("")
    phrasing = result.get("phrasing")
    if phrasing:
        lines += [f"Generic openers: the base model's own words ({phrasing['base']}, greedy, {phrasing['dtype']}): "
                  f"its first sentence to the prompt itself for {phrasing['own']:.0%} of the prompts, else one of the "
                  f"{len(phrasing['pool'])} generic sentences it said to other prompts of the world.", ""]
    if result.get("pool_kinds"):
        lines += ["Pool response tokens: " + ", ".join(f"{v:.1%} {k}" for k, v in result["pool_kinds"].items()) + ".",
                  ""]
    if result.get("base_kind_loss"):
        lines += [kind_loss_line(result["base_kind_loss"]), ""]
    for a in result.get("ablations", []):
        lines.append(f"{a['name']}: {a['note']}.")
    lines += ["Columns: held-out losses are mean per-token losses of the held-out prompts' responses (lower is "
              "better); accuracy is greedy answers graded against the reference; [lo, hi]: 95% bootstrap interval "
              "over the held-out prompts; wrong answers repeated: the share "
              "of the pool's wrong-answer prompts the model answers with the wrong answer it was shown; "
              "kept/dropped shares compare what each method trained on with the ground-truth token kinds (slm "
              "selects online: no fixed mask); reference moved: mean |score| / mean base loss (score health).", ""]
    if result.get("samples"):
        lines += ["## What the selection kept", "", "Dropped tokens as [-text-]; generic and noise tokens tagged "
                  "{kind: ...}; informative tokens as they are.", "", *sample_lines(result["samples"]), ""]
    lines += ["## Conclusion", "", *[f"- {s}" for s in result["conclusion"]], "", "## Time per stage", "",
              "| stage | seconds |", "|---|---:|"]
    lines += [f"| {t['stage']} | {t['seconds']:.1f}"
              + (f" (reused; {t['computed_seconds']:.1f} when computed)" if "computed_seconds" in t else "") + " |"
              for t in result["timings"]]
    total = sum(t["seconds"] for t in result["timings"])
    lines += [f"| **total** | **{total:.1f}** |", ""]
    lines += [f"{name}: {path}" for name, path in result["paths"].items() if path]
    return "\n".join(lines) + "\n"
