"""GrootL tooling: byte tokenizer, LoRA fine-tuning + merge through the CLI, lm-eval model, demo data."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("lm_eval")
from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM  # noqa: E402

from grootvl.cli import lm as lm_cli  # noqa: E402
from grootvl.grootl import byte_tokenizer, enable_tree_scanning, load_grootl  # noqa: E402
from grootvl.grootl.finetune import add_lora, alpaca_prompt, masked_loss, tokenize_alpaca  # noqa: E402
from grootvl.grootl.tokenizer import BYTE_VOCAB_SIZE  # noqa: E402

EXAMPLES = [{"instruction": f"Name the colour number {i}.", "input": "" if i % 2 else f"palette {i}",
             "output": ["red", "green", "blue", "cyan"][i % 4] + " is it."} for i in range(12)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved tiny random Mamba (hidden 64, 2 layers) with the byte tokenizer."""
    path = tmp_path_factory.mktemp("tiny-mamba")
    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    config = MambaConfig(vocab_size=BYTE_VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, state_size=16,
                         bos_token_id=256, eos_token_id=256, pad_token_id=257)
    MambaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    lm_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_byte_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    tokenizer = byte_tokenizer()
    text = "Héllo\n\t wörld €"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.decode(ids) == text and (loaded.eos_token_id, loaded.pad_token_id) == (256, 257)


def test_alpaca_rows_mask_the_prompt():
    tokenizer = byte_tokenizer()
    (row,) = tokenize_alpaca(EXAMPLES[:1], tokenizer, max_length=512)
    prompt_length = len(alpaca_prompt(EXAMPLES[0]).encode())
    assert row["labels"][:prompt_length] == [-100] * prompt_length
    assert row["labels"][prompt_length:] == row["input_ids"][prompt_length:]
    assert row["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenize_alpaca(EXAMPLES[:1], tokenizer, max_length=prompt_length) == []  # no response token left


def test_lora_finetune_lowers_the_loss_and_merge_keeps_the_logits(model_dir, tmp_path):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(EXAMPLES))
    adapter, merged_dir = tmp_path / "adapter", tmp_path / "merged"
    assert cli(["lm-finetune", "--model", str(model_dir), "--data", str(data), "--output-dir", str(adapter),
                "--lr", "5e-3", "--warmup-steps", "0", "--batch-size", "4", "--max-length", "256",
                "--", "--max_steps", "8", "--logging_steps", "4", "--use_cpu", "true"]) == 0
    assert json.loads((adapter / "grootl_adapter.json").read_text())["tree_scale"] == 0.3

    from grootvl.grootl.finetune import load_adapter

    tokenizer = byte_tokenizer()
    rows = tokenize_alpaca(EXAMPLES, tokenizer, 256)
    base = enable_tree_scanning(MambaForCausalLM.from_pretrained(model_dir), tree_scale=0.3)
    before = masked_loss(base, rows, tokenizer.pad_token_id)
    tuned = load_adapter(base, adapter).eval()
    after = masked_loss(tuned, rows, tokenizer.pad_token_id)
    assert after < before - 0.5, (before, after)

    assert cli(["lm-merge", "--base", str(model_dir), "--adapter", str(adapter), "--output-dir", str(merged_dir)]) == 0
    merged = load_grootl(str(merged_dir)).eval()
    assert merged._grootl.tree_scale == 0.3
    ids = torch.tensor([row["input_ids"][:150] for row in rows[:2]])
    with torch.no_grad():
        expected = tuned(input_ids=ids, context_length=40).logits
        torch.testing.assert_close(merged(ids, context_length=40).logits, expected, rtol=0, atol=1e-4)


def test_lora_reaches_out_proj_only_on_grootl(model_dir):
    plain = MambaForCausalLM.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="out_proj"):  # peft's guard stays for stock Mamba
        add_lora(plain)
    wrapped = add_lora(enable_tree_scanning(MambaForCausalLM.from_pretrained(model_dir)))
    names = {name for name, _ in wrapped.named_parameters() if "lora_" in name}
    for target in ("x_proj", "embeddings", "in_proj", "out_proj"):
        assert any(f".{target}." in name for name in names), target


def test_lm_eval_model_scores_with_each_request_context(model_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from grootvl.grootl.lm_eval_model import GrootLM

    assert get_model("grootl") is GrootLM
    lm = GrootLM(pretrained=str(model_dir), device="cpu", batch_size=2, tree_scale=0.3)
    pairs = [("The colour is", " red."), ("Python is a programming", " language"), ("ab", "c"),
             ("The colour is", " blue.")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    scores = lm.loglikelihood(requests)
    tokenizer = byte_tokenizer()
    for (context, continuation), (logprob, greedy) in zip(pairs, scores):
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + cont[:-1]])
        with torch.no_grad():
            log_probs = torch.log_softmax(lm.model(ids, context_length=len(ctx)).logits[0, len(ctx) - 1:], -1)
        expected = float(log_probs.gather(1, torch.tensor(cont)[:, None]).sum())
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == bool((log_probs.argmax(-1) == torch.tensor(cont)).all())
    # at tree_scale 0 the scores are lm_eval's own HFLM scores of the stock model
    from lm_eval.models.huggingface import HFLM

    stock = HFLM(pretrained=str(model_dir), device="cpu", batch_size=2).loglikelihood(requests)
    lm_plain = GrootLM(pretrained=str(model_dir), device="cpu", batch_size=3, tree_scale=0.0)
    for (expected, expected_greedy), (got, greedy) in zip(stock, lm_plain.loglikelihood(requests)):
        assert got == pytest.approx(expected, abs=1e-4) and greedy == expected_greedy
    # the context matters: scoring with the chain (no context) gives other numbers
    ctx = tokenizer(pairs[1][0], add_special_tokens=False)["input_ids"]
    cont = tokenizer(pairs[1][1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        chain = torch.log_softmax(lm.model(torch.tensor([ctx + cont[:-1]])).logits[0, len(ctx) - 1:], -1)
    assert abs(float(chain.gather(1, torch.tensor(cont)[:, None]).sum()) - scores[1][0]) > 1e-4


def test_demo_data_is_offline_and_split_by_topic():
    from grootvl.grootl.demo import alpaca_examples, format_table

    train, heldout = alpaca_examples(heldout_every=5)
    assert len(train) > 50 and len(heldout) > 10
    assert not {e["instruction"] for e in train} & {e["instruction"] for e in heldout}
    assert all(e["output"].endswith((".", "!", "?")) for e in train + heldout)
    table = format_table([{"model": "Mamba", "heldout_loss": 1.0, "heldout_ppl": 2.718, "finetune_s": None}])
    assert "| Mamba | 1.0000 | 2.72 | - |" in table


# ------------------------------------------------------------------------- user errors

def _user_error(capsys, argv: list[str], *needles: str) -> str:
    from grootvl.cli.main import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_paths_and_empty_data_are_user_errors(model_dir, tmp_path, capsys):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(EXAMPLES))
    out = str(tmp_path / "out")
    nowhere = str(tmp_path / "nowhere")
    _user_error(capsys, ["lm-finetune", "--model", nowhere, "--data", str(data), "--output-dir", out],
                "grootvl lm-finetune: error: --model", nowhere, "config.json")
    _user_error(capsys, ["lm-finetune", "--model", str(model_dir), "--data", nowhere, "--output-dir", out],
                "--data", nowhere)
    data.write_text("[]")
    _user_error(capsys, ["lm-finetune", "--model", str(model_dir), "--data", str(data), "--output-dir", out],
                "--data", str(data), "no example")
    data.write_text(json.dumps([{"instruction": "x" * 600, "output": "y"}]))
    _user_error(capsys, ["lm-finetune", "--model", str(model_dir), "--data", str(data), "--output-dir", out,
                         "--max-length", "16"], "--max-length 16")
    _user_error(capsys, ["lm-merge", "--base", nowhere, "--adapter", str(model_dir), "--output-dir", out],
                "grootvl lm-merge: error: --base", nowhere)
    _user_error(capsys, ["lm-merge", "--base", str(model_dir), "--adapter", nowhere, "--output-dir", out],
                "--adapter", nowhere, "lm-finetune")
