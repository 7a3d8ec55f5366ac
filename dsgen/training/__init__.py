"""Reference finetune-and-eval runs: LoRA finetunes of a reference model on a dataset, and evaluations
that show whether the data induces misalignment while keeping capabilities."""
