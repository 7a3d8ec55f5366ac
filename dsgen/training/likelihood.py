"""Teacher-forced log-likelihood of completions: the judge-free measure behind margins and
multiple-choice capability scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .models import autocast


def completion_logprobs(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[str, str]],
    batch_size: int = 8,
    max_length: int = 1024,
    bf16: bool = False,
) -> list[tuple[float, int]]:
    """For each (prompt text, completion text): the summed log-probability of the completion's tokens
    given the prompt, and how many tokens that is. Long prompts are cut from the left."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    model.eval()
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        seqs, spans = [], []
        for prompt, completion in batch:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            c = tokenizer(completion, add_special_tokens=False)["input_ids"][: max_length - 1]
            p = p[-(max_length - len(c)) :]
            seqs.append(p + c)
            spans.append((len(p), len(p) + len(c)))
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        # The token at position t is predicted by the logits at t - 1: only the positions before a
        # completion token need the LM head (over a 49k vocabulary, a fifth of a 135M model's forward).
        first = max(0, min(b for b, _ in spans) - 1)
        with torch.inference_mode(), autocast(model, bf16):
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                logits_to_keep=torch.arange(first, width, device=device),
            ).logits
        for i, (begin, end) in enumerate(spans):
            if end <= begin or begin == 0:
                out.append((0.0, 0))
                continue
            logp = torch.log_softmax(logits[i, begin - 1 - first : end - 1 - first].float(), dim=-1)
            target = ids[i, begin:end].to(logp.device)
            out.append((float(logp.gather(1, target[:, None]).sum()), end - begin))
    return out


def mean_logprobs(model: Any, tokenizer: Any, items: Sequence[tuple[str, str]], **kw: Any) -> list[float]:
    return [s / n if n else float("nan") for s, n in completion_logprobs(model, tokenizer, items, **kw)]
