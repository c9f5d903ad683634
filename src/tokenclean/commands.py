"""The table of ``tokenclean`` commands, on its own so that every command's module can read its one-line help
without importing the command line (``cli``) that lists them. Nothing here imports anything."""

# name -> (one-line help, "module:function" adding the command's flags and its func). Adding a command is one row.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run a whole cleaning pipeline into a run directory (resumable)", "tokenclean.cli:run_flags"),
    "compare": ("run several methods side by side and compare held-out loss", "tokenclean.cli:compare_flags"),
    "score": ("per-token loss of every response token under one model", "tokenclean.cli:score_flags"),
    "select": ("choose the tokens to keep from base and reference scores", "tokenclean.cli:select_flags"),
    "train": ("token-masked fine-tuning on the kept tokens", "tokenclean.cli:train_flags"),
    "export": ("write the cleaned dataset for other trainers (TRL, Axolotl, LLaMA-Factory)",
               "tokenclean.cli:export_flags"),
    "eval": ("benchmark a model with lm-evaluation-harness (the paper's suite plus GSM8K)",
             "tokenclean.evaluation.cli:eval_flags"),
    "pretrain": ("pretrain a tiny Llama (and its tokenizer) from scratch on text files",
                 "tokenclean.demo.pretrain_cli:pretrain_flags"),
    "demo": ("the whole story on a generated world with SmolLM2-135M-Instruct (--tiny: a tiny base pretrained here): "
             "run the methods, measure, report",
             "tokenclean.demo.cli:demo_flags"),
    "report": ("an HTML page of a run: tokens coloured by score, kept/dropped, plots, comparison",
               "tokenclean.report.cli:report_flags"),
    "show": ("print one sample with its kept and dropped tokens in colour", "tokenclean.report.cli:show_flags"),
}

TRAINING_COMMANDS = frozenset({"run", "compare", "train", "pretrain", "demo"})
"""Commands that fine-tune models: ``cli.main`` freezes the training stack's objects out of the garbage collector's
reach first (``compute.modeling.freeze_library_objects``)."""
