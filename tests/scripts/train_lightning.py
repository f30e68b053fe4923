"""A tiny Lightning training on CPU with hooks.lightning.EnergyCallback; prints a JSON summary.

``--package pytorch_lightning`` trains with the standalone ``pytorch_lightning`` package instead of
``lightning.pytorch``. The last batch of an epoch is short when ``--samples`` is not a multiple of
``--batch-size``, so the samples the hook reads from the batches are known exactly.
"""

import argparse
import json

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--package", choices=["lightning", "pytorch_lightning"], default="lightning")
parser.add_argument("--name", default="tiny-lightning")
parser.add_argument("--samples", type=int, default=44)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--accumulate", type=int, default=2)
parser.add_argument("--devices", type=int, default=1, help="CPU processes (DDP when > 1)")
parser.add_argument("--report-dir", default="", help="also write rank-N.json here (DDP)")
parser.add_argument("--fail-at", type=int, default=0, help="raise in this training batch (1-based)")
args = parser.parse_args()

if args.package == "lightning":
    import lightning.pytorch as pl
else:
    import pytorch_lightning as pl

from hooks.lightning import EnergyCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(16, 4)
        self.batches = 0
        self.last_loss = None

    def training_step(self, batch, batch_idx):
        self.batches += 1
        if self.batches == args.fail_at:
            raise RuntimeError("planned failure")
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.last_loss = loss.item()
        return {"loss": loss}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


torch.manual_seed(0)
data = TensorDataset(torch.randn(args.samples, 16), torch.randn(args.samples, 4))
train = DataLoader(data, batch_size=args.batch_size, shuffle=True)
val = DataLoader(data, batch_size=args.batch_size)
callback = EnergyCallback(name=args.name)
trainer = pl.Trainer(
    accelerator="cpu",
    devices=args.devices,
    strategy="ddp" if args.devices > 1 else "auto",
    max_epochs=args.epochs,
    accumulate_grad_batches=args.accumulate,
    limit_val_batches=2,
    num_sanity_val_steps=1,
    callbacks=[callback],
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
model = Tiny()
trainer.fit(model, train, val)
summary = {
    "rank": trainer.global_rank,
    "run_id": callback.run_id,
    "steps": callback.steps,
    "errors": callback.errors,
    "global_step": trainer.global_step,
    "batches": model.batches,
    "last_loss": model.last_loss,
}
print(json.dumps(summary), flush=True)
if args.report_dir:  # ranks share stdout, where their lines may interleave
    with open(f"{args.report_dir}/rank-{summary['rank']}.json", "w") as report:
        json.dump(summary, report)
