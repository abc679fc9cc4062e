"""``grootvl lm-demo``: plain Mamba vs Mamba + LoRA vs Mamba + GrootL, end to end, offline.

Everything it needs ships with Python: a small byte-level Mamba is pre-trained on the Python
reference text of ``pydoc_data.topics``, then fine-tuned with LoRA on Alpaca-format examples
derived from the same text ("Explain the Python topic X" -> the first sentences of section
X). One topic in five is held out of fine-tuning; the held-out loss over the response tokens
is reported for the pre-trained model, after LoRA fine-tuning, and after LoRA fine-tuning
with GrootL tree scanning (tree_scale 0.3) - as a table, JSON and a PNG.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .finetune import masked_loss, perplexity, tokenize_alpaca, train_lora, training_arguments
from .model import enable_tree_scanning
from .tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer

_HEADER_RULE = re.compile(r"[=*]{3,}")
_FIRST_SENTENCES = re.compile(r"(.{20,220}?[.!?])(?=\s|$)")


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (defaults: a few minutes on 2 CPU cores)."""

    hidden_size: int = 64
    num_layers: int = 2
    state_size: int = 16
    pretrain_steps: int = 300
    pretrain_batch: int = 8
    pretrain_length: int = 128
    pretrain_lr: float = 3e-3
    finetune_steps: int = 60
    finetune_batch: int = 8
    finetune_lr: float = 3e-3
    max_length: int = 384
    tree_scale: float = 0.3
    heldout_every: int = 5
    seed: int = 0


def topic_sections() -> list[tuple[str, str, str]]:
    """(topic key, section title, first sentences) for the sections of ``pydoc_data.topics``.

    A section starts at a title underlined with ``===`` or ``***``; its first sentences are
    taken from the unindented prose lines (indented lines are grammar or code).
    """
    from pydoc_data.topics import topics

    sections = []
    for key in sorted(topics):
        lines = topics[key].split("\n")
        for i in range(len(lines) - 1):
            title, rule = lines[i].strip(), lines[i + 1].strip()
            if not title or not _HEADER_RULE.fullmatch(rule) or len(rule) != len(title):
                continue
            prose = []
            for line in lines[i + 2:]:
                if _HEADER_RULE.fullmatch(line.strip() or "-"):
                    break
                if line and not line.startswith(" "):
                    prose.append(line)
                if sum(map(len, prose)) > 600:
                    break
            text = " ".join(" ".join(prose).split())
            match = _FIRST_SENTENCES.match(text)
            if match:
                sections.append((key, title, match.group(1)))
    return sections


def alpaca_examples(heldout_every: int = 5) -> tuple[list[dict], list[dict]]:
    """Alpaca-format (train, held-out) examples; every ``heldout_every``-th topic is held out."""
    keys = sorted({key for key, _, _ in topic_sections()})
    heldout = set(keys[::heldout_every])
    train, test, titles = [], [], set()
    for key, title, sentences in topic_sections():
        if title in titles:  # a few sections appear under several topics: keep the first only
            continue
        titles.add(title)
        example = {"instruction": f'Explain the Python topic "{title}".', "input": "", "output": sentences}
        (test if key in heldout else train).append(example)
    return train, test


def pretraining_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def _new_model(config: DemoConfig, tokenizer):
    from transformers import MambaConfig, MambaForCausalLM

    mamba_config = MambaConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        state_size=config.state_size, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, use_cache=False,
    )
    return MambaForCausalLM(mamba_config)


def pretrain(model, token_ids: torch.Tensor, config: DemoConfig, log=print) -> list[float]:
    """Next-token training on random windows of ``token_ids`` (AdamW, cosine decay)."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.pretrain_lr,
                                                   total_steps=max(config.pretrain_steps, 1), pct_start=0.1)
    model.train()
    losses = []
    span = config.pretrain_length + 1
    for step in range(config.pretrain_steps):
        starts = torch.randint(0, len(token_ids) - span, (config.pretrain_batch,), generator=generator)
        batch = torch.stack([token_ids[s:s + span] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == config.pretrain_steps:
            log(f"pretrain step {step + 1}/{config.pretrain_steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    return losses


def _finetune(model, tokenizer, rows, config: DemoConfig, output_dir: Path):
    args = training_arguments(
        output_dir, learning_rate=config.finetune_lr, warmup_steps=5, max_steps=config.finetune_steps,
        per_device_train_batch_size=config.finetune_batch, logging_steps=max(config.finetune_steps // 4, 1),
        seed=config.seed, use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=False,
    )
    peft_model, trainer = train_lora(model, tokenizer, rows, args)
    peft_model.eval()
    return peft_model


def run_demo(output_dir: str | Path, config: DemoConfig | None = None, log=print) -> dict:
    """Run the whole demo; writes ``lm_demo.json`` and ``lm_demo.png`` to ``output_dir``."""
    config = config or DemoConfig()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    tokenizer = byte_tokenizer()
    tokenizer.save_pretrained(output_dir / "pretrained")

    train, heldout = alpaca_examples(config.heldout_every)
    train_rows = tokenize_alpaca(train, tokenizer, config.max_length)
    heldout_rows = tokenize_alpaca(heldout, tokenizer, config.max_length)
    log(f"Alpaca examples: {len(train_rows)} fine-tuning, {len(heldout_rows)} held out")

    # Pre-training uses the GrootL mixer at tree_scale 0, which is plain Mamba (tested to 1e-5)
    # but scans with the compiled operator instead of transformers' Python loop on CPU.
    model = enable_tree_scanning(_new_model(config, tokenizer), tree_scale=0.0)
    corpus = torch.tensor(tokenizer(pretraining_text(), add_special_tokens=False)["input_ids"])
    phase = time.perf_counter()
    pretrain_losses = pretrain(model, corpus, config, log)
    timings = {"pretrain_s": time.perf_counter() - phase}
    model.save_pretrained(output_dir / "pretrained")
    state = {k: v.clone() for k, v in model.state_dict().items()}

    results = []

    def evaluate(name: str, evaluated, seconds: float | None):
        loss = masked_loss(evaluated, heldout_rows, tokenizer.pad_token_id)
        results.append({"model": name, "heldout_loss": loss, "heldout_ppl": perplexity(loss), "finetune_s": seconds})
        log(f"{name}: held-out loss {loss:.4f} (ppl {perplexity(loss):.2f})")

    evaluate("Mamba", model, None)
    for name, scale in (("Mamba + LoRA", 0.0), ("Mamba + GrootL", config.tree_scale)):
        torch.manual_seed(config.seed)
        fresh = _new_model(config, tokenizer)
        fresh.load_state_dict(state)
        enable_tree_scanning(fresh, tree_scale=scale)
        phase = time.perf_counter()
        tuned = _finetune(fresh, tokenizer, train_rows, config, output_dir / name.replace(" ", "").replace("+", "_"))
        seconds = time.perf_counter() - phase
        evaluate(name, tuned, seconds)
        if scale:
            sample = _sample(tuned, tokenizer, heldout[0])
            log(f"GrootL greedy answer to {heldout[0]['instruction']!r}: {sample!r}")

    report = {
        "config": asdict(config),
        "results": results,
        "pretrain_final_loss": sum(pretrain_losses[-20:]) / max(len(pretrain_losses[-20:]), 1),
        "timings": {**timings, "total_s": time.perf_counter() - started,
                    "total_cpu_s": time.process_time() - cpu_started},
        "threads": torch.get_num_threads(),
    }
    (output_dir / "lm_demo.json").write_text(json.dumps(report, indent=2))
    _plot(results, output_dir / "lm_demo.png")
    log(format_table(results))
    log(f"wall time {report['timings']['total_s']:.1f} s (CPU time {report['timings']['total_cpu_s']:.1f} s, "
        f"{torch.get_num_threads()} threads); wrote {output_dir / 'lm_demo.json'} and "
        f"{output_dir / 'lm_demo.png'}")
    return report


def _sample(model, tokenizer, example: dict, max_new_tokens: int = 80) -> str:
    from .finetune import alpaca_prompt

    prompt = torch.tensor([tokenizer(alpaca_prompt(example), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        output = model.generate(input_ids=prompt, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                use_cache=True)
    return tokenizer.decode(output[0, prompt.shape[1]:], skip_special_tokens=True)


def format_table(results: list[dict]) -> str:
    lines = ["| model | held-out loss | held-out ppl | fine-tune s |", "|---|---|---|---|"]
    for row in results:
        seconds = "-" if row["finetune_s"] is None else f"{row['finetune_s']:.1f}"
        lines.append(f"| {row['model']} | {row['heldout_loss']:.4f} | {row['heldout_ppl']:.2f} | {seconds} |")
    return "\n".join(lines)


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = [row["model"] for row in results]
    losses = [row["heldout_loss"] for row in results]
    bars = ax.bar(names, losses, color=["#888888", "#4c72b0", "#55a868"][: len(names)])
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylabel("held-out loss (nats/byte)")
    ax.set_title("Byte-level Mamba on pydoc topics")
    ax.set_ylim(0, max(losses) * 1.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
