"""Fine-tuning an MLLM with the paper's recipe, and choosing its checkpoint.

- `config`: `FinetuneConfig`, the recipe's settings, checked when params load.
- `sft_data`: sample table -> supervised records (the paper's prompt and answer) and their collator.
- `train`: the training run itself (HF Trainer; one process, torchrun or accelerate launch; resumable).
- `select`: pick the checkpoint whose validation answers score best (through the query core).

Run it: `python -m agegender.mllm.finetune --samples ... --base-model DIR --out DIR` (see `__main__`).
"""
