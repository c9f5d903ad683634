"""What a demo run's fixed-model selection kept, by ground-truth kind and by whether the base model already predicted
the token (base loss < 0.5 nats, teacher-forced on the pool), with the warm-up scores (base loss - reference loss).
Reads a finished run (``tokenclean demo --out OUT``); trains nothing.

    python experiments/known_tokens.py /work/studies/demo-smol10-s0/run --seed 0
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq

from tokenclean.core.artifacts import Scores, Selection
from tokenclean.demo.metrics import KIND_CODES, KNOWN_LOSS
from tokenclean.runs.layout import BASE_SCORES, Layout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the demo's run directory (<out>/run)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    fixed = Layout.variant_of(args.run, args.seed, "fixed")
    base = Scores.load(fixed.path(BASE_SCORES)).token_loss
    ref = Scores.load(fixed.path(fixed.reference_scores)).token_loss
    codes = pq.read_table(fixed.kinds, columns=["kind"]).column("kind").combine_chunks().flatten().to_numpy()
    keep = Selection.load(fixed.path(fixed.selection)).keep_mask
    score, known = base - ref, base < KNOWN_LOSS
    first = np.concatenate([[True], codes[1:] != codes[:-1]])  # the first token of a run of one kind
    print(f"| pool tokens | count | base loss | reference loss | mean score | kept by fixed |\n|---|---:|---:|---:|---:|---:|")
    groups = {}
    for kind in ("informative", "generic"):
        is_kind = codes == KIND_CODES[kind]
        groups[f"{kind}, base knows (< {KNOWN_LOSS})"] = is_kind & known
        groups[f"{kind}, base does not"] = is_kind & ~known
    gen = codes == KIND_CODES["generic"]
    groups["generic, first token of a phrase run"] = gen & first
    groups["generic, the rest"] = gen & ~first
    groups["noise"] = codes == KIND_CODES["noise"]
    for name, m in groups.items():
        print(f"| {name} | {m.sum()} | {base[m].mean():.3f} | {ref[m].mean():.3f} | {score[m].mean():.3f} | "
              f"{keep[m].mean():.1%} |")
    resp = codes >= 0
    print(f"\nknown to the base: {known[codes == KIND_CODES['informative']].mean():.1%} of informative, {known[gen].mean():.1%} of generic; "
          f"fixed kept {keep[resp & known].mean():.1%} of the known response tokens, "
          f"{keep[resp & ~known].mean():.1%} of the rest")


if __name__ == "__main__":
    main()
