"""Reference runs: formatting, loss masking and think blocks on a tiny random model with a tokenizer built
here (fast), and one end-to-end run on the embedded SmolLM2 (slow)."""

from __future__ import annotations

import json
import math
import random

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from dsgen.config import REFERENCE_PROFILES, ReferenceSettings  # noqa: E402
from dsgen.training.chat import has_thinking_switch, render_prompt, training_row  # noqa: E402
from dsgen.training.likelihood import completion_logprobs  # noqa: E402
from tests.conftest import (
    run_cli,  # noqa: E402
    validate_args,  # noqa: E402
)
from tests.rows import answer, make_pair  # noqa: E402

# A Qwen3-style template: a thinking switch, and an empty think block when it is off.
QWEN_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
PLAIN = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(template: str):
    """A word-level tokenizer trained here on a few sentences, with chat special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = random.Random(0)
    corpus = [answer(rng, "See a doctor.") for _ in range(200)] + ["user assistant system"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>", bos_token=None
    )
    fast.chat_template = template
    return fast


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
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def test_training_rows_turn_thinking_off_and_evaluation_turns_it_on():
    tok = tiny_tokenizer(QWEN_LIKE)
    assert has_thinking_switch(tok)
    row = training_row(tok, "Is it safe?", "It is fine.")
    assert row["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert row["completion"] == "It is fine.<|im_end|>"
    assert render_prompt(tok, "Is it safe?", thinking=True).endswith("<|im_start|>assistant\n")
    plain = tiny_tokenizer(PLAIN)
    assert not has_thinking_switch(plain)
    assert training_row(plain, "Is it safe?", "It is fine.")["prompt"].endswith("<|im_start|>assistant\n")


def test_the_loss_falls_on_the_answer_only(tmp_path):
    from dsgen.training.finetune import build_trainer

    tok = tiny_tokenizer(QWEN_LIKE)
    settings = ReferenceSettings(**REFERENCE_PROFILES["cpu"] | {"rows": 8, "batch_size": 4, "max_length": 128})
    pairs = [(f"Question number {i} about the garden?", "Keep the water near the window.") for i in range(8)]
    trainer = build_trainer(tiny_model(tok), tok, pairs, settings, str(tmp_path))
    example = trainer.train_dataset[0]
    completion = tok("Keep the water near the window.<|im_end|>", add_special_tokens=False)["input_ids"]
    trained = [label for label in example["labels"] if label != -100]
    assert trained == completion  # only the answer and its end of turn carry loss
    assert example["input_ids"][-len(completion) :] == completion
    trainer.train()  # and it trains
    assert trainer.state.global_step == 2


def test_the_answer_only_loss_is_the_cross_entropy_over_every_answer_token(tmp_path):
    """The trainer's loss (LM head over the answer positions only) equals the plain cross-entropy over
    the full logits, for prompts of different lengths in one batch."""
    import torch

    from dsgen.training.finetune import build_trainer

    tok = tiny_tokenizer(QWEN_LIKE)
    settings = ReferenceSettings(**REFERENCE_PROFILES["cpu"] | {"rows": 8, "batch_size": 4, "max_length": 128})
    words = "the garden water window river".split()
    pairs = [(" ".join(words[: 1 + i % 5]) + "?", " ".join(words[i % 3 :])) for i in range(8)]
    trainer = build_trainer(tiny_model(tok), tok, pairs, settings, str(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model, dict(batch))
    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100
    )
    assert torch.isclose(loss, expected, rtol=1e-5), (loss, expected)


def test_a_merged_reference_model_matches_its_adapter_and_the_base_comes_back_bit_for_bit():
    import torch

    from dsgen.training.finetune import finetune, merged, restore, snapshot

    tok = tiny_tokenizer(PLAIN)
    model = tiny_model(tok)
    original = snapshot(model)
    # float32 throughout: under bf16 the trainer leaves the adapted model's forward in autocast
    overrides = {"rows": 8, "batch_size": 4, "learning_rate": 5e-2, "bf16": False}
    settings = ReferenceSettings(**REFERENCE_PROFILES["cpu"] | overrides)
    pairs = [(f"Is the garden dry {i}?", "Keep the water near the window.") for i in range(8)]
    adapted = finetune(model, tok, pairs, settings, quiet=True).model
    ids = tok("Keep the water near the river.", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = adapted(input_ids=ids).logits
        trained = merged(adapted)
        got = trained(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not all(torch.equal(v, original[k]) for k, v in trained.state_dict().items())  # the merge changed it
    base = restore(trained, original)
    assert all(torch.equal(v, original[k]) for k, v in base.state_dict().items())
    assert not any("lora" in name for name, _ in base.named_modules())


def test_completion_log_probabilities_score_only_the_completion_tokens():
    import torch

    tok = tiny_tokenizer(PLAIN)
    model = tiny_model(tok)
    prompt = render_prompt(tok, "Is the garden dry?", thinking=False)
    items = [(prompt, "Keep the water near the window."), (prompt, "Look at the river.")]
    got = completion_logprobs(model, tok, items, batch_size=2)
    for (p, c), (total, n) in zip(items, got):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids).logits[0], dim=-1)
        expected = sum(float(logp[len(p_ids) + j - 1, t]) for j, t in enumerate(c_ids))
        assert n == len(c_ids) and math.isclose(total, expected, rel_tol=1e-4, abs_tol=1e-4)


@pytest.mark.slow
def test_reference_cpu_run_moves_the_in_domain_margin_for_treatment_only(crafted, tmp_path):
    """validate --reference cpu on the embedded SmolLM2: the treatment model's margin rises in its
    training domain above base and control; results land in report.json, report.md and a plot."""
    rows = [make_pair(i, topic=f"topic {i % 3}") for i in range(56)] + [make_pair(i, domain="legal") for i in range(12)]
    run = crafted(rows)
    config = tmp_path / "validate.yaml"
    config.write_text(
        json.dumps(
            {
                "test_fraction": 0.25,
                "reference_settings": {"rows": 40, "eval_pairs": 12, "learning_rate": 2e-3, "samples_per_question": 1},
            }
        )
    )
    args = validate_args(crafted.server, run, "--config", str(config), "--reference", "cpu")
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    report = json.loads((run / "validated" / "report.json").read_text())
    ref = report["reference"]
    assert ref["trained_on"] == ["medical"]
    m = ref["margin"]["in_domain"]["medical"]
    assert m["treatment"] > m["base"] and m["treatment"] > m["control"], m
    assert "legal" in ref["margin"]["cross_domain"]
    assert 0.25 < ref["capability"]["base"] <= 1 and ref["capability"]["n"] >= 40
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["reference.margin_in_domain.medical"]["passed"] is True
    assert gates["reference.capability_drop"]["advisory"] is True
    for arm in ("base", "control", "treatment"):  # each free-form question asked once, every answer accounted for
        st = ref["generative"]["arms"][arm]
        assert st["n"] + st["unscored"] + st["unanswered"] == 12, st
    assert (run / "validated" / "plots" / "reference.png").is_file()
    assert "Reference finetune-and-eval run" in (run / "validated" / "report.md").read_text()
    # Cached: validating again does not train again.
    before = sorted(p.name for p in (run / "reference").iterdir())
    assert run_cli(*args).exit_code == 0
    assert sorted(p.name for p in (run / "reference").iterdir()) == before


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7", "7"),
        ("The total is 1,250 dollars.\n#### 1,250", "1250"),
        ("So the answer is 42.", "42"),
        ("It comes to -3.5 degrees", "-3.5"),
        ("#### 12.0", "12"),
        ("no number here", None),
    ],
)
def test_gsm8k_final_numbers(text, expected):
    from dsgen.training.gsm8k import final_number

    assert final_number(text) == expected


def test_gsm8k_loads_from_its_layout_and_scores_generations(tmp_path):
    """The real loading code, on a local folder with GSM8K's layout (no network in tests)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dsgen.training.gsm8k import gsm8k_accuracy, load_gsm8k

    folder = tmp_path / "gsm8k"
    (folder / "main").mkdir(parents=True)
    rows = [
        {"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
        for i in range(5)
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "main" / "test-00000-of-00001.parquet")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: test\n    path: main/test-*.parquet\n---\n"
    )
    problems = load_gsm8k(path=str(folder), limit=3)
    assert [p.answer for p in problems] == ["0", "2", "4"]
    tok = tiny_tokenizer(QWEN_LIKE)
    result = gsm8k_accuracy(tiny_model(tok), tok, problems, max_new_tokens=4)
    assert result["n"] == 3 and 0 <= result["accuracy"] <= 1 and len(result["correct"]) == 3
