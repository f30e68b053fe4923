"""Lightning or transformers with ``EnergyCallback(budget=..., on_exceed="stop")`` on CPU: the
training runs "forever" (many epochs) until the daemon's stop; a checkpoint hook after it
(Lightning: a callback's ``on_train_end``; HF: ``save_strategy="steps"`` saving at the stop)
prints what it saw. Prints a JSON summary."""

import argparse
import json
import os
import time

for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                   ("WANDB_DISABLED", "true")):  # fmt: skip
    os.environ.setdefault(key, value)

import torch  # noqa: E402
from torch import nn  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("framework", choices=["lightning", "hf"])
parser.add_argument("--budget", type=float, required=True)
parser.add_argument("--output-dir", default="")
args = parser.parse_args()
torch.manual_seed(0)

if args.framework == "lightning":
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from hooks.lightning import EnergyCallback

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(16, 4)

        def training_step(self, batch, batch_idx):
            time.sleep(0.01)
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Checkpoint(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            print(json.dumps({"checkpoint_step": trainer.global_step}), flush=True)

    data = TensorDataset(torch.randn(64, 16), torch.randn(64, 4))
    callback = EnergyCallback(name="pl-budget", batch_size=8, budget=args.budget,
                              on_exceed="stop")  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=100000, callbacks=[callback, Checkpoint()],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Tiny(), DataLoader(data, batch_size=8))
    global_step = trainer.global_step
else:
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )  # fmt: skip

    from hooks.hf import EnergyCallback

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.ids = torch.randint(0, 100, (n, 16), generator=torch.Generator().manual_seed(0))

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(0.01)

    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=4, num_train_epochs=100000,
        learning_rate=1e-3, logging_steps=1000000, save_strategy="steps", save_steps=1000000,
        eval_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
    )  # fmt: skip
    callback = EnergyCallback(name="hf-budget", budget=args.budget, on_exceed="stop")
    trainer = Trainer(model=GPT2LMHeadModel(config), args=training_args,
                      train_dataset=Tokens(16), callbacks=[Slow(), callback])  # fmt: skip
    trainer.train()
    global_step = trainer.state.global_step
print(json.dumps({"run_id": callback.run_id, "steps": callback.steps, "global_step": global_step,
                  "budget_stopped": callback.budget_stopped}), flush=True)  # fmt: skip
