"""Benchmark evaluation (issue 5): converters, metrics, tables, and the harness run offline with a tiny model."""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
from pathlib import Path

import pytest

from tokenclean.errors import ConfigError, DataError, TokencleanError
from tokenclean.evaluation import benchmark_columns, converters, read_results, results_table, write_results
from tokenclean.evaluation import cli as eval_cli
from tokenclean.evaluation.gsm8k import extract_answer, process_results as gsm8k_score, same_number
from tokenclean.evaluation.metrics import truthfulqa_mc2
from tokenclean.evaluation.tydiqa import best_f1, f1_score, macro_f1, normalize_answer, read_goldp

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
EVAL_DIR = SHARED / "eval"
needs_data = pytest.mark.skipif(not EVAL_DIR.is_dir(), reason=f"shared evaluation data not found at {EVAL_DIR}")


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(SHARED / "tokenizers" / "gpt2")


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,  # short contexts keep the 50k-vocabulary output layer cheap on CPU
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model_dir(tiny_model, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every connection, and fail the test if anything tried one (even if the caller swallowed the error)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
    assert not attempts, f"evaluation tried to reach the network: {attempts}"


@pytest.fixture
def fake_generations(monkeypatch):
    """Make the harness model 'generate' hand-written text, keyed by a field of each request's document."""

    def install(key: str, texts: dict[str, str]):
        from lm_eval.models.huggingface import HFLM

        def generate_until(self, requests, disable_tqdm=False):
            return [texts[request.doc[key]] for request in requests]

        monkeypatch.setattr(HFLM, "generate_until", generate_until)

    return install


def write_tydiqa_fixture(directory: Path) -> dict[str, str]:
    """A two-language GoldP dev file (SQuAD layout) plus a train file; returns hand-made predictions by id."""
    dev = {
        "english-1": ("Where is the Eiffel Tower?", ["Eiffel tower in Paris"], "the Eiffel Tower"),  # F1 2/3
        "english-2": ("What colour is the sky?", ["blue"], "Blue."),  # F1 1 after normalisation
        "english-3": ("Who wrote Hamlet?", ["Shakespeare", "William Shakespeare"], "Marlowe"),  # F1 0
        "finnish-1": ("Mikä on Suomen pääkaupunki?", ["Helsinki"], "Helsinki"),  # F1 1
        "finnish-2": ("Kuka kirjoitti Kalevalan?", ["Elias Lönnrot"], "Lönnrot kirjoitti sen"),  # P 1/3, R 1/2: F1 0.4
    }
    paragraphs = [
        {"context": f"Passage for {qid}.", "qas": [{"id": qid, "question": q, "answers": [{"text": a, "answer_start": 0} for a in answers]}]}
        for qid, (q, answers, _) in dev.items()
    ]
    train = [
        {"context": "Paris is in France.", "qas": [{"id": "english-9", "question": "Where is Paris?", "answers": [{"text": "France"}]}]},
        {"context": "Turku on kaupunki.", "qas": [{"id": "finnish-9", "question": "Mikä Turku on?", "answers": [{"text": "kaupunki"}]}]},
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tydiqa-goldp-v1.1-dev.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    (directory / "tydiqa-goldp-v1.1-train.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": train}]}))
    return {qid: prediction for qid, (_, _, prediction) in dev.items()}


def write_boolq(directory: Path, n: int) -> Path:
    """A local-data directory holding ``n`` made-up BoolQ questions (gold alternating no/yes)."""
    directory.mkdir(parents=True)
    rows = [{"query": f"Passage: p{i}\nQuestion: q{i}?", "choices": ["no", "yes"], "gold": i % 2} for i in range(n)]
    (directory / "boolq.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


# --- converters: the documented structure ---------------------------------------------------------------------


@needs_data
def test_hellaswag_converter_gives_four_endings_and_gold_in_range():
    rows = converters.read_hellaswag(EVAL_DIR / "hellaswag_val_full.txt.bz2")
    assert len(rows) == 10042
    assert all(len(row["choices"]) == 4 and 0 <= row["gold"] < 4 for row in rows)
    assert rows[0] == {
        "query": "Roof shingle removal: A man is sitting on a roof. he",
        "choices": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "gold": 3,
    }


@needs_data
def test_logiqa_converter_strips_option_letters_and_maps_answer_letter():
    rows = converters.read_logiqa(EVAL_DIR / "logiqa_test.txt")
    assert len(rows) == 651
    assert all(len(row["options"]) == 4 and 0 <= row["gold"] < 4 for row in rows)
    assert rows[0]["gold"] == 0  # answer letter "a"
    assert rows[0]["options"][0] == "Civic Park is north of the administrative service area"
    assert rows[0]["question"] == "Based on the above statement, which of the following can be derived?"
    # the released file has a few options written "A?text" instead of "A.text": the letter still goes ...
    assert rows[10]["options"][0] == "Many Chinese people buy homes for their children to study in the US"
    # ... and one lost its letter altogether ("A." got glued to "City A"): nothing of its text is removed
    assert rows[524]["options"][0] == "When the land in City A.B was listed for the second time, the government raised its base price."


@needs_data
def test_truthfulqa_converter_turns_answer_dicts_into_choices_and_labels():
    rows = converters.read_truthfulqa(EVAL_DIR / "truthfulqa_mc_task.json")
    assert len(rows) == 817
    first = rows[0]["mc2_targets"]
    assert first["labels"] == [1, 1, 1, 0, 0, 0]
    assert first["choices"][0] == "Nothing in particular happens when you eat a pomegranate."
    for row in rows:
        for key in ("mc1_targets", "mc2_targets"):
            assert len(row[key]["choices"]) == len(row[key]["labels"])
            assert set(row[key]["labels"]) == {0, 1}


@needs_data
def test_mmlu_converter_keeps_choices_as_strings_with_gold_in_range():
    rows = converters.read_mmlu(EVAL_DIR / "mmlu" / "test" / "abstract_algebra_test.csv", "abstract_algebra")
    assert len(rows) == 100
    assert rows[0]["choices"] == ["0", "4", "2", "6"] and rows[0]["answer"] == 1  # numbers stay text
    tests = sorted((EVAL_DIR / "mmlu" / "test").glob("*_test.csv"))
    all_rows = [row for path in tests for row in converters.read_mmlu(path, path.stem)]
    assert len(tests) == 57 and len(all_rows) == 14042
    assert all(len(row["choices"]) == 4 and row["answer"] in range(4) for row in all_rows)
    assert all(isinstance(choice, str) for row in all_rows for choice in row["choices"])


def test_converters_name_the_file_and_line_of_bad_input(tmp_path):
    hellaswag = tmp_path / "hellaswag.txt"
    hellaswag.write_text("Label: context\n7\na\nb\nc\nd\n")
    with pytest.raises(DataError, match=r"hellaswag.txt: line 2: gold index 7 is outside 0..3"):
        converters.read_hellaswag(hellaswag)
    mmlu = tmp_path / "x_test.csv"
    mmlu.write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,B\n")
    with pytest.raises(DataError, match=r"x_test.csv: line 2: gold index must be an integer"):
        converters.read_mmlu(mmlu, "x")
    truthfulqa = tmp_path / "tqa.json"
    truthfulqa.write_text(json.dumps([{"question": "q", "mc1_targets": {"a": 1}, "mc2_targets": {"a": 1, "b": 0}}]))
    with pytest.raises(DataError, match=r"item 0: mc1_targets needs true \(1\) and false \(0\) answers"):
        converters.read_truthfulqa(truthfulqa)


# --- metrics on hand-made values ------------------------------------------------------------------------------


def test_squad_f1_matches_hand_computed_values():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert f1_score("the Eiffel Tower", "Eiffel tower in Paris") == pytest.approx(2 / 3)  # P 2/2, R 2/4
    assert f1_score("Lönnrot kirjoitti sen", "Elias Lönnrot") == pytest.approx(0.4)  # P 1/3, R 1/2
    assert f1_score("", "blue") == 0.0
    assert best_f1("Shakespeare", ["William Shakespeare", "Shakespeare"]) == 1.0
    assert macro_f1({"english": [2 / 3, 1.0, 0.0], "finnish": [1.0, 0.4]}) == pytest.approx((5 / 9 + 0.7) / 2)


def test_read_goldp_groups_questions_by_language(tmp_path):
    write_tydiqa_fixture(tmp_path)
    rows = read_goldp(tmp_path / "tydiqa-goldp-v1.1-dev.json")
    assert list(rows) == ["english", "finnish"]
    assert [row["id"] for row in rows["english"]] == ["english-1", "english-2", "english-3"]
    assert rows["english"][2]["answers"] == ["Shakespeare", "William Shakespeare"]
    (tmp_path / "bad.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="top-level 'data' list"):
        read_goldp(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("She sells 16 - 3 - 4 = 9 eggs.\n#### 18", "18"),  # the marked answer wins over later numbers
        ("9 * 2 = 18 dollars. So the answer is 18.", "18"),  # otherwise the last number
        ("#### 1,250", "1,250"),
        ("It costs $-5.50 in the end", "-5.50"),
        ("no number here", None),
    ],
)
def test_gsm8k_extracts_the_final_number(generation, expected):
    assert extract_answer(generation) == expected


def test_gsm8k_exact_match_compares_values():
    doc = {"question": "q", "answer": "2 * 625 = <<2*625=1250>>1250\n#### 1250"}
    assert gsm8k_score(doc, ["So she pays $1,250.00."]) == {"exact_match": 1.0}
    assert gsm8k_score(doc, ["#### 125"]) == {"exact_match": 0.0}
    assert gsm8k_score(doc, ["I don't know"]) == {"exact_match": 0.0}
    assert not same_number(None, "3")


def test_truthfulqa_mc2_is_probability_mass_on_true_answers():
    doc = {"mc2_targets": {"choices": ["a", "b", "c"], "labels": [1, 0, 1]}}
    results = [(math.log(0.2), False), (math.log(0.5), False), (math.log(0.3), False)]
    assert truthfulqa_mc2(doc, results)["acc"] == pytest.approx(0.5)
    # log-likelihoods of long answers under a weak model: exp() underflows, the score must not become 0/0
    far = truthfulqa_mc2(doc, [(-2000.0, False), (-2001.0, False), (-2002.0, False)])["acc"]
    assert far == pytest.approx((1 + math.exp(-2)) / (1 + math.exp(-1) + math.exp(-2)))


# --- results and tables ---------------------------------------------------------------------------------------


def _results(values: dict[str, float]) -> dict:
    tasks = {task: {"metric": "acc", "value": value, "n": 10, "num_fewshot": 0} for task, value in values.items()}
    return {"model": "m", "tasks": tasks, "average": sum(values.values()) / len(values)}


def test_results_table_has_methods_as_rows_and_tasks_in_paper_order(tmp_path):
    full = _results({"boolq": 0.75, "mmlu": 0.5, "truthfulqa_mc2": 0.25})
    write_results(full, tmp_path / "full.json")
    assert read_results(tmp_path / "full.json") == full
    assert benchmark_columns(full) == {"boolq": 0.75, "mmlu": 0.5, "truthfulqa_mc2": 0.25, "average": 0.5}
    table = results_table({"full": read_results(tmp_path / "full.json"), "cleaned": {"mmlu": 0.6, "gsm8k": 0.1}})
    assert table.splitlines() == [
        "| method | TruthfulQA | MMLU | BoolQ | GSM8K | avg |",
        "|---|---|---|---|---|---|",
        "| full | 25.00 | 50.00 | 75.00 | - | 50.00 |",
        "| cleaned | - | 60.00 | - | 10.00 | 35.00 |",
    ]


def test_read_results_rejects_other_json(tmp_path):
    (tmp_path / "x.json").write_text("[1]")
    with pytest.raises(DataError, match="not a tokenclean evaluation results file"):
        read_results(tmp_path / "x.json")


# --- the harness, offline, with a tiny model ------------------------------------------------------------------


@needs_data
def test_every_local_task_scores_a_few_examples_offline(tiny_model, tokenizer, no_network):
    pytest.importorskip("lm_eval")
    from tokenclean.evaluation import evaluate

    tasks = ["truthfulqa_mc2", "logiqa", "mmlu_anatomy", "hellaswag", "arc_challenge", "boolq", "gsm8k"]
    results = evaluate(tiny_model, tasks, tokenizer=tokenizer, data_dir=EVAL_DIR, limit=2, max_gen_toks=8, batch_size=4)
    assert list(results["tasks"]) == tasks
    expected_metric = {"truthfulqa_mc2": "mc2", "gsm8k": "exact_match"}
    expected_shots = {"mmlu_anatomy": 5, "gsm8k": 5}
    for task, result in results["tasks"].items():
        assert result["metric"] == expected_metric.get(task, "acc")
        assert 0.0 <= result["value"] <= 1.0
        assert result["n"] == 2
        assert result["num_fewshot"] == expected_shots.get(task, 0)
    # accuracy over 2 questions is 0, 1/2 or 1
    assert results["tasks"]["boolq"]["value"] in (0.0, 0.5, 1.0)
    assert results["average"] == pytest.approx(sum(r["value"] for r in results["tasks"].values()) / len(tasks))
    assert tokenizer.pad_token is None  # padding was set on a copy


@needs_data
def test_gsm8k_scores_hand_made_generations_through_the_harness(tiny_model, tokenizer, fake_generations):
    pytest.importorskip("lm_eval")
    from tokenclean.evaluation import evaluate

    questions = [json.loads(line)["question"] for line in (EVAL_DIR / "gsm8k_test.jsonl").open().readlines()[:4]]
    generations = ["She sells 9 eggs a day.\n#### 18", "It takes 3 bolts", "#### 70,000", "He runs 540 m.\n#### 545"]
    fake_generations("question", dict(zip(questions, generations, strict=True)))  # golds: 18, 3, 70000, 540
    results = evaluate(tiny_model, ["gsm8k"], tokenizer=tokenizer, data_dir=EVAL_DIR, limit=4)
    # the harness's closed-form standard error of a mean: sample std (n - 1) / sqrt(n) = 0.5 / 2
    assert results["tasks"]["gsm8k"] == {"metric": "exact_match", "value": 0.75, "stderr": pytest.approx(0.25), "n": 4,
                                         "num_fewshot": 5}
    assert results["average_stderr"] == pytest.approx(0.25)


@needs_data
def test_tydiqa_averages_f1_per_language_then_across_languages(tiny_model, tokenizer, tmp_path, fake_generations):
    pytest.importorskip("lm_eval")
    from tokenclean.evaluation import evaluate

    fake_generations("id", write_tydiqa_fixture(tmp_path))
    results = evaluate(tiny_model, ["tydiqa"], tokenizer=tokenizer, data_dir=tmp_path)
    tydiqa = results["tasks"]["tydiqa"]
    assert tydiqa["metric"] == "f1" and tydiqa["n"] == 5 and tydiqa["num_fewshot"] == 1
    assert tydiqa["parts"] == pytest.approx({"tydiqa_en": (2 / 3 + 1 + 0) / 3, "tydiqa_fi": (1 + 0.4) / 2})
    assert tydiqa["value"] == pytest.approx(((2 / 3 + 1) / 3 + 0.7) / 2)  # not the pooled mean 3.0667 / 5


@needs_data
def test_eval_cli_runs_available_tasks_and_writes_results(model_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    data_dir = write_boolq(tmp_path / "eval", 4)
    parser = argparse.ArgumentParser(prog="tokenclean")
    eval_cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "results.json"
    args = parser.parse_args(["eval", "--model", str(model_dir), "--data-dir", str(data_dir), "--limit", "3", "--out", str(out)])
    assert args.func is eval_cli.run
    assert args.func(args) == 0
    results = read_results(out)
    assert list(results["tasks"]) == ["boolq"] and results["tasks"]["boolq"]["n"] == 3
    assert results["model"] == str(model_dir) and results["limit"] == 3
    printed = capsys.readouterr()
    assert "| model | BoolQ | avg |" in printed.out
    assert "skipping mmlu" in printed.err and "skipping tydiqa" in printed.err


@needs_data
def test_limits_per_benchmark_and_standard_errors_reach_the_table(tiny_model, tokenizer, no_network):
    pytest.importorskip("lm_eval")
    from tokenclean.evaluation import evaluate

    results = evaluate(tiny_model, ["boolq", "arc_challenge", "mmlu_anatomy"], tokenizer=tokenizer, data_dir=EVAL_DIR,
                       limit={"default": 6, "mmlu_anatomy": 2}, batch_size=4)
    assert {task: r["n"] for task, r in results["tasks"].items()} == {"boolq": 6, "arc_challenge": 6, "mmlu_anatomy": 2}
    for result in results["tasks"].values():
        p, n = result["value"], result["n"]
        assert result["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))  # a 0/1 mean's sample stderr
    stderrs = [r["stderr"] for r in results["tasks"].values()]
    assert results["average_stderr"] == pytest.approx(math.sqrt(sum(se * se for se in stderrs)) / 3)
    boolq = results["tasks"]["boolq"]
    assert f"{100 * boolq['value']:.2f} ± {100 * boolq['stderr']:.2f}" in results_table({"m": results})


def test_limit_parsing_and_checks():
    from tokenclean.evaluation.benchmarks import limits_for, parse_limit, parse_tasks

    assert parse_limit("100") == 100
    assert parse_limit("100, mmlu=2,gsm8k=50") == {"default": 100, "mmlu": 2, "gsm8k": 50}
    assert parse_limit("mmlu=2") == {"mmlu": 2}
    for bad, match in [("x", "expected N or BENCHMARK=N"), ("mmlu=2,mmlu=3", "mmlu is given twice"), (",", "empty")]:
        with pytest.raises(ConfigError, match=match):
            parse_limit(bad)
    benchmarks = parse_tasks("mmlu,boolq,gsm8k")
    assert limits_for(benchmarks, None) == {"mmlu": None, "boolq": None, "gsm8k": None}
    assert limits_for(benchmarks, 5) == {"mmlu": 5, "boolq": 5, "gsm8k": 5}
    assert limits_for(benchmarks, {"mmlu": 2}) == {"mmlu": 2, "boolq": None, "gsm8k": None}
    assert limits_for(benchmarks, {"default": 9, "mmlu": 2}) == {"mmlu": 2, "boolq": 9, "gsm8k": 9}
    with pytest.raises(ConfigError, match="limit given for arc_challenge, which is not evaluated"):
        limits_for(benchmarks, {"arc_challenge": 2})
    with pytest.raises(ConfigError, match="positive number"):
        limits_for(benchmarks, {"default": 3, "boolq": 0})


def test_standard_errors_combine_as_independent_samples():
    from tokenclean.evaluation.benchmarks import BENCHMARKS, average_stderr, combine_stderr

    # pooled (MMLU subjects): weights n_i / N
    assert combine_stderr(BENCHMARKS["mmlu"], [0.1, 0.2], [30, 10]) == pytest.approx(math.hypot(0.75 * 0.1, 0.25 * 0.2))
    # unweighted (TyDi QA languages): weights 1 / k
    assert combine_stderr(BENCHMARKS["tydiqa"], [0.1, 0.2], [30, 10]) == pytest.approx(math.hypot(0.05, 0.1))
    assert combine_stderr(BENCHMARKS["boolq"], [0.04], [100]) == pytest.approx(0.04)
    assert combine_stderr(BENCHMARKS["mmlu"], [0.1, None], [3, 3]) is None
    assert average_stderr([0.03, 0.04]) == pytest.approx(0.025) and average_stderr([0.03, None]) is None
    # a table of results without standard errors (written before they were recorded) shows bare values
    old = {"tasks": {"boolq": {"metric": "acc", "value": 0.5, "n": 4}}, "average": 0.5}
    assert results_table({"m": old}).splitlines()[-1] == "| m | 50.00 | 50.00 |"


@needs_data
@pytest.mark.slow
def test_mmlu_runs_all_subjects_and_pools_them_by_size(tiny_model, tokenizer):
    pytest.importorskip("lm_eval")
    from tokenclean.evaluation import evaluate

    mmlu = evaluate(tiny_model, ["mmlu"], tokenizer=tokenizer, data_dir=EVAL_DIR, limit=1)["tasks"]["mmlu"]
    assert len(mmlu["parts"]) == 57 and mmlu["n"] == 57
    assert mmlu["value"] == pytest.approx(sum(mmlu["parts"].values()) / 57)


def test_task_list_parsing_keeps_order_and_accepts_single_mmlu_subjects():
    from tokenclean.evaluation.benchmarks import parse_tasks

    benchmarks = parse_tasks("mmlu, boolq,mmlu,mmlu_anatomy")
    assert [b.name for b in benchmarks] == ["mmlu", "boolq", "mmlu_anatomy"]
    assert benchmarks[2].num_fewshot == 5 and benchmarks[2].local_path == "mmlu/test/anatomy_test.csv"


def test_hub_results_are_read_with_the_hub_filter_and_combined_per_benchmark():
    from types import SimpleNamespace

    from tokenclean.evaluation.benchmarks import BENCHMARKS
    from tokenclean.evaluation.harness import _benchmark_result

    output = {
        "results": {
            "gsm8k": {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.3,
                      "exact_match_stderr,strict-match": 0.07, "exact_match_stderr,flexible-extract": 0.1},
            "tydiqa_goldp_en": {"f1,none": 0.6, "f1_stderr,none": "N/A"},
            "tydiqa_goldp_fi": {"f1,none": 0.2, "f1_stderr,none": 0.1},
            "mmlu_anatomy": {"acc,none": 0.5, "acc_stderr,none": 0.08},
            "mmlu_virology": {"acc,none": 0.25, "acc_stderr,none": 0.12},
        },
        "n-samples": {
            "gsm8k": {"effective": 20},
            "tydiqa_goldp_en": {"effective": 30},
            "tydiqa_goldp_fi": {"effective": 10},
            "mmlu_anatomy": {"effective": 30},
            "mmlu_virology": {"effective": 10},
        },
    }

    def tasks(*names):
        return [SimpleNamespace(task_name=name) for name in names]

    gsm8k = _benchmark_result(BENCHMARKS["gsm8k"], tasks("gsm8k"), output, data_dir=None)
    assert gsm8k == {"metric": "exact_match", "value": 0.3, "stderr": 0.1, "n": 20, "num_fewshot": 5}
    tydiqa = _benchmark_result(BENCHMARKS["tydiqa"], tasks("tydiqa_goldp_en", "tydiqa_goldp_fi"), output, data_dir=None)
    assert tydiqa["value"] == pytest.approx(0.4) and tydiqa["n"] == 40  # languages weigh the same
    assert tydiqa["stderr"] is None  # one language without a standard error: none for the benchmark
    mmlu = _benchmark_result(BENCHMARKS["mmlu"], tasks("mmlu_anatomy", "mmlu_virology"), output, data_dir=None)
    assert mmlu["value"] == pytest.approx((0.5 * 30 + 0.25 * 10) / 40)  # subjects weigh by their questions
    assert mmlu["stderr"] == pytest.approx(math.hypot(0.75 * 0.08, 0.25 * 0.12))


# --- user errors, before any model loads ----------------------------------------------------------------------


def test_unknown_task_and_missing_files_fail_before_the_model_loads(tmp_path):
    pytest.importorskip("lm_eval")
    from tokenclean.evaluation import evaluate

    hub_id = "no-such-org/no-such-model"  # would only fail when loaded
    with pytest.raises(ConfigError, match="unknown evaluation task 'mmlu2'"):
        evaluate(hub_id, ["boolq", "mmlu2"])
    with pytest.raises(DataError, match="tydiqa-goldp-v1.1-dev.json not found"):
        evaluate(hub_id, ["tydiqa"], data_dir=tmp_path)
    with pytest.raises(ConfigError, match="limit must be a positive"):
        evaluate(hub_id, ["boolq"], limit=0)
    with pytest.raises(ConfigError, match="model directory /no/such/model not found"):
        evaluate("/no/such/model", ["boolq"], data_dir=tmp_path)


def test_missing_harness_gives_an_install_hint(monkeypatch):
    from tokenclean.evaluation import evaluate

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(TokencleanError, match=r"pip install 'tokenclean\[eval\]'"):
        evaluate("no-such-org/no-such-model", ["boolq"])


@needs_data
def test_dtype_sets_the_weights_and_is_recorded(model_dir, tmp_path, no_network):
    pytest.importorskip("lm_eval")
    from tokenclean.evaluation import evaluate

    data_dir = write_boolq(tmp_path / "eval", 8)
    fp32 = evaluate(model_dir, ["boolq"], data_dir=data_dir, device="cpu", dtype="float32")
    bf16 = evaluate(model_dir, ["boolq"], data_dir=data_dir, device="cpu", dtype="bfloat16")
    assert (fp32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    assert bf16["tasks"]["boolq"]["n"] == fp32["tasks"]["boolq"]["n"] == 8
    with pytest.raises(ConfigError, match="unknown dtype 'int8'"):
        evaluate(model_dir, ["boolq"], data_dir=data_dir, device="cpu", dtype="int8")


def test_evaluate_in_child_raises_the_childs_error_here(tiny_model_dir):
    from tokenclean.errors import ConfigError
    from tokenclean.evaluation.harness import evaluate_in_child

    with pytest.raises(ConfigError, match="unknown evaluation task 'no_such_task'"):
        evaluate_in_child(tiny_model_dir, "no_such_task")


def test_default_harness_batch_size_is_memory_bounded_on_cpu(tiny_model, tokenizer):
    """Wide batches only cost memory on a CPU (MMLU 5-shot on SmolLM2: 10.5 GB at 8, 3.7 GB at 2, 2.4 GB at 1): the
    default there is CPU_BATCH_SIZE; an explicit size is kept."""
    pytest.importorskip("lm_eval")
    from tokenclean.evaluation.harness import CPU_BATCH_SIZE, _harness_model

    assert _harness_model(tiny_model, tokenizer, "cpu", None).batch_size == CPU_BATCH_SIZE == 1
    assert _harness_model(tiny_model, tokenizer, "cpu", 5).batch_size == 5
    parser = argparse.ArgumentParser()
    eval_cli.eval_flags(parser)
    assert eval_cli._batch_size(parser.parse_args(["--model", "m"]).batch_size) is None  # left to evaluate
    assert eval_cli._batch_size(parser.parse_args(["--model", "m", "--batch-size", "3"]).batch_size) == 3
