"""LoRA finetuning with trl's SFTTrainer on prompt-completion rows (loss on the answer only)."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ..config import ReferenceSettings
from .chat import training_row
from .models import use_bf16


@dataclass
class TrainResult:
    model: Any
    rows: int
    steps: int
    tokens: int
    seconds: float
    final_loss: float | None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def build_trainer(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], settings: ReferenceSettings, out: str
) -> Any:
    """trl's SFTTrainer with a LoRA adapter over prompt-completion rows rendered by the model's template."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import Trainer
    from trl import SFTConfig, SFTTrainer

    class AnswerLossSFTTrainer(SFTTrainer):
        """trl's loss (on the answer tokens), computed by the model's own cross-entropy over the LM head
        of the answer positions only. trl's default fuses the head to log each token's entropy and top-1
        accuracy, recomputed in the backward pass: 45% of a CPU step for SmolLM2 and its 49k vocabulary,
        for metrics nobody reads here; skipping the prompt positions saves a further 17% (the loss is
        the same to the last bit; bench/reference_cpu.py)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            labels = inputs["labels"]
            carries = (labels != -100).any(dim=0).nonzero()
            first = max(int(carries[0]) - 1, 0) if len(carries) else 0  # the first position predicting an answer
            inputs = {k: v for k, v in inputs.items() if k != "completion_mask"} | {
                "logits_to_keep": labels.shape[1] - first,
                "shift_labels": torch.nn.functional.pad(labels[:, first + 1 :], (0, 1), value=-100),
            }
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    rows = [training_row(tokenizer, prompt, answer) for prompt, answer in pairs]
    on_gpu = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=out,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_length=settings.max_length,
        completion_only_loss=True,
        activation_checkpointing=False,  # small models: recomputing activations only costs time
        logging_steps=max(1, len(rows) // (settings.batch_size * 5)),
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=not on_gpu,
        bf16=use_bf16(settings.bf16),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return AnswerLossSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
    )


def finetune(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], settings: ReferenceSettings, quiet: bool
) -> TrainResult:
    """Train a LoRA adapter on (prompt, answer) pairs; returns the adapted model. The adapter is inserted
    into `model` in place (its own weights stay frozen)."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="dsgen-sft-") as out:
        quiet_io = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
        with quiet_io:
            trainer = build_trainer(model, tokenizer, pairs, settings, out)
            tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
            started = time.monotonic()
            output = trainer.train()
            seconds = time.monotonic() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainer.model.eval()
    return TrainResult(
        model=trainer.model,
        rows=len(pairs),
        steps=output.global_step,
        tokens=int(tokens * settings.epochs),
        seconds=seconds,
        final_loss=losses[-1] if losses else None,
    )


def snapshot(model: Any) -> dict[str, Any]:
    """A copy of the model's weights on the CPU, to restore the base exactly after each reference model."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def merged(adapted: Any) -> Any:
    """The adapted model with its LoRA weights merged into the base's, for evaluation: a LoRA layer costs
    its own small matmuls on every call (+40% per generated token for the 135M model on CPU)."""
    model = adapted.merge_and_unload()
    model.__dict__.pop("forward", None)  # trl patches the instance's forward (a fused LM head); drop it
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def restore(model: Any, weights: dict[str, Any]) -> Any:
    """The base model again, bit for bit, after `merged` changed its weights in place."""
    model.load_state_dict(weights)
    return model
