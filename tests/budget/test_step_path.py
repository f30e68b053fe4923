"""The budget flag read is on the step path `make bench` measures (bench/overhead.py times
``handle.fast_hook``, the steady-state optimizer hook): a run with no budget of its own still
reads the flag every step, so the benchmark's figure includes it, and a stop set by the reply
reader raises from that very hook, after the step completed."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from hooks import BudgetExceeded  # noqa: E402
from hooks.budget import BudgetReply  # noqa: E402
from hooks.pytorch import track  # noqa: E402


def test_the_measured_fast_hook_reads_the_budget_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("PROFILER_HOME", str(tmp_path))
    monkeypatch.setenv("PROFILER_AUTOSTART", "0")
    monkeypatch.delenv("PROFILER_RUN_ID", raising=False)
    handle = track(name="step-path", batch_size=1, run_id="step-path")  # no budget given
    try:
        param = torch.nn.Parameter(torch.zeros(1))
        param.grad = torch.ones(1)
        opt = torch.optim.SGD([param], lr=1.0)
        opt.step()  # steady state: the hook the benchmark times is attached
        assert handle._own_hook is not None
        opt.step()
        assert handle.client.budget.stop_at == math.inf
        handle.client.budget.apply(BudgetReply("step-path", "stop", 2.5, None, 2.0, "USD", 0,
                                               "stop"))  # fmt: skip
        with pytest.raises(BudgetExceeded) as caught:
            opt.step()
        assert param.item() == -3.0  # the step that raised completed (three SGD steps of 1)
        assert caught.value.step == 3
        opt.step()  # raised once
    finally:
        handle.stop()
