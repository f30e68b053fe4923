"""A tiny transformers Trainer run on CPU with hooks.hf.EnergyCallback; prints a JSON summary.

The model is a 2-layer GPT-2 built from a config with random weights (nothing is downloaded).
With ``--samples`` a multiple of ``--batch-size`` every micro-batch is full, so the samples the
hook counts from the configuration are exact; the micro-batches of an epoch need not be a multiple
of ``--accumulate`` (the last step of an epoch is then shorter).
"""

import argparse
import json
import os

for key, value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("WANDB_DISABLED", "true"),
):
    os.environ.setdefault(key, value)

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from hooks.hf import EnergyCallback  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--name", default="tiny-hf")
parser.add_argument("--samples", type=int, default=36)
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--accumulate", type=int, default=2)
parser.add_argument("--output-dir", required=True)
args = parser.parse_args()


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int = 16) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


torch.manual_seed(0)
config = GPT2Config(
    vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
)
model = GPT2LMHeadModel(config)
training_args = TrainingArguments(
    output_dir=args.output_dir,
    per_device_train_batch_size=args.batch_size,
    gradient_accumulation_steps=args.accumulate,
    num_train_epochs=args.epochs,
    learning_rate=1e-3,
    logging_steps=1,
    save_strategy="no",
    eval_strategy="no",
    report_to="none",
    disable_tqdm=True,
    use_cpu=True,
    seed=0,
)
callback = EnergyCallback(name=args.name)
trainer = Trainer(model=model, args=training_args, train_dataset=Tokens(args.samples),
                  callbacks=[callback])  # fmt: skip
trainer.train()
losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
summary = {
    "run_id": callback.run_id,
    "steps": callback.steps,
    "errors": callback.errors,
    "global_step": trainer.state.global_step,
    "logged_losses": len(losses),
    "last_loss": losses[-1] if losses else None,
}
print(json.dumps(summary), flush=True)
