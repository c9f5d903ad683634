"""Greedy generation for the demo (demo.generate): order, stopping rule, answer sentences."""

from tokenclean.compute.modeling import load_tokenizer
from tokenclean.demo.generate import answer_done, generate


def test_answer_done_needs_the_whole_answer_sentence():
    assert answer_done("The letters are a, b. So the answer is ab.")
    assert answer_done("So, the answer is: 12\n")
    assert not answer_done("So the answer is 12")  # the number may go on
    assert not answer_done("The answer will be 12.")


def test_generate_keeps_the_prompt_order_and_stops_a_row_when_told(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    prompts = [tokenizer(text)["input_ids"] for text in ("a b c d e f", "hello", "one two three")]
    free = generate(tiny_model_dir, prompts, 12, dtype="float32")
    assert len(free) == 3 and all(len(tokenizer(t)["input_ids"]) >= 6 for t in free)
    assert generate(tiny_model_dir, prompts[::-1], 12, dtype="float32") == free[::-1]  # sorted inside, not outside
    stopped = generate(tiny_model_dir, prompts, 12, dtype="float32", stop=lambda text: len(text) > 0)
    assert all(f.startswith(s) and len(s) < len(f) for s, f in zip(stopped, free))
