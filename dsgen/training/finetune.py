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
    from trl import SFTConfig, SFTTrainer

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
        gradient_checkpointing=False,  # small models: recomputing activations only costs time
        logging_steps=max(1, len(rows) // (settings.batch_size * 5)),
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
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
    return SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
    )


def finetune(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], settings: ReferenceSettings, quiet: bool
) -> TrainResult:
    """Train a LoRA adapter on (prompt, answer) pairs; returns the adapted model (the base is wrapped)."""
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
