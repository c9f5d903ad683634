"""The demo's total time: `tokenclean demo` in a fresh directory (the world, the base's phrasing, every stage),
then again (everything cached), with the time per stage the demo prints and the CPU flags it ran on.

    python bench/bench_demo.py [--out /tmp/tokenclean-bench-demo] [--tiny] [--quick]

Targets: the default demo (SmolLM2-135M-Instruct) <= 10 minutes on a 2-core CPU with native bf16 (issue 29); the
tiny world (--tiny) <= 5 minutes. The GGUF's one-time conversion to a model directory is cached across runs in
$TOKENCLEAN_CACHE (~/.cache/tokenclean): point it at an empty directory to include it.
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch

from common import machine

from tokenclean.compute.hardware import compute_facts
from tokenclean.compute.modeling import freeze_library_objects
from tokenclean.demo.run import DemoConfig, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/tokenclean-bench-demo")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    facts = compute_facts(torch.device("cpu"))
    print(machine())
    print(f"CPU: {facts['cpu_model']}; flags: {' '.join(facts['cpu_flags'])}; native bf16: {facts['native_bf16']}")
    shutil.rmtree(args.out, ignore_errors=True)
    freeze_library_objects()  # as `tokenclean demo` does (cli.main, for every training command)
    cfg = DemoConfig(out=args.out, tiny=args.tiny, quick=args.quick)
    target = 300 if args.tiny else 600
    start = time.perf_counter()
    result = run_demo(cfg, progress=False)
    first = time.perf_counter() - start
    start = time.perf_counter()
    run_demo(cfg, progress=False)
    second = time.perf_counter() - start
    print("\n| stage | seconds |\n|---|---:|")
    for t in result["timings"]:
        print(f"| {t['stage']} | {t['seconds']:.1f} |")
    print(f"\nfirst run (fresh directory): {first:.1f} s ({'within' if first <= target else 'over'} the {target} s "
          "target)")
    print(f"second run (everything cached): {second:.1f} s")
    print(machine())


if __name__ == "__main__":
    main()
