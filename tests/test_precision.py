import json

import pytest
import torch

from scalerec.epoch import train_step
from scalerec.precision import autocast_context, grad_scaler
from scalerec.training import train
from tests.helpers import tiny_config


def tiny_gradients(precision: str) -> torch.Tensor:
    """The weight gradient of a loss so small that its fp16 gradients underflow unless the loss is scaled."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = torch.nn.Linear(8, 1)
    x = torch.randn(64, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: we only look at the gradients
    scaler = grad_scaler(precision, device)
    with autocast_context(precision, device):
        out = model(x)
    loss = out.float().sum() * 1e-9
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    return model.weight.grad.clone()


def test_fp16_loss_scaling_recovers_gradients_that_underflow_without_it():
    exact = tiny_gradients("fp32")
    assert exact.abs().min() > 0
    with torch.autocast("cpu", dtype=torch.float16):  # the same computation in fp16, no loss scaling
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 1)
        x = torch.randn(64, 8)
        out = model(x)
    (out.float().sum() * 1e-9).backward()
    assert torch.count_nonzero(model.weight.grad) == 0  # 1e-9 underflows in fp16: every gradient is lost
    scaled = tiny_gradients("fp16")
    assert torch.allclose(scaled, exact, rtol=1e-2)


def test_fp16_steps_with_inf_gradients_are_skipped_and_counted():
    device = torch.device("cpu")
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = grad_scaler("fp16", device)
    before = model.weight.detach().clone()
    users = torch.tensor([[1e30, 1e30]])  # overflows fp16: inf activations, inf gradients

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, u, i):
            return self.inner(u).squeeze(-1)

    _, skipped = train_step(Wrap(), opt, scaler, autocast_context("fp16", device), users, None, torch.ones(1))
    assert int(skipped) == 1
    assert torch.equal(model.weight, before)  # the step was skipped, the weights untouched
    assert scaler.get_scale() < 65536.0  # and the scale backed off


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_runs_and_learns(tmp_path, precision):
    cfg = tiny_config(tmp_path, epochs=2, precision=precision)
    summary = train(cfg, log=lambda s: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["state"] == "finished" and rows[1]["loss"] < rows[0]["loss"]
    assert summary["best"]["sampled_HR@10"] > 3 * 10 / 101
    assert all("skipped_steps" in r for r in rows)


def test_micro_batch_gradients_add_up_in_fp32_under_bf16():
    """One user in each of 256 slices: its row's gradient is their sum, which bf16 buffers would stop growing
    about 256x one term in; the fp32 buffers give the fp32 step's update, up to bf16's rounding of each term."""
    from scalerec.model import build_model

    g = torch.Generator().manual_seed(0)
    n = 4096
    users = torch.zeros(n, dtype=torch.long)
    items = torch.randint(0, 50, (n,), generator=g)
    labels = torch.ones(n)  # every term of the same sign: the sum grows with the slices
    deltas = {}
    for precision, micro in (("fp32", None), ("bf16", 16)):
        torch.manual_seed(0)
        model = build_model("neumf", 3, 50, 8, (16, 16, 8), 0.0)
        before = model.mlp_user.weight[0].detach().clone()  # through the first layer: bf16 under autocast
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        ctx = autocast_context(precision, torch.device("cpu"))
        train_step(model, opt, scaler, ctx, users, items, labels, micro_batch=micro)
        deltas[precision] = model.mlp_user.weight[0].detach() - before
    torch.testing.assert_close(deltas["bf16"], deltas["fp32"], rtol=0.05, atol=2e-4)


@pytest.fixture
def matmul_precision_kept():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_tf32_by_default_on_a_gpu_full_fp32_on_the_cpu_and_the_log_says_which(tmp_path, matmul_precision_kept):
    from scalerec.precision import set_matmul_precision

    assert set_matmul_precision("auto", torch.device("cuda")) == "high"  # TF32 where the GPU has it
    assert torch.get_float32_matmul_precision() == "high"
    assert set_matmul_precision("auto", torch.device("cpu")) == "highest"
    assert torch.get_float32_matmul_precision() == "highest"
    torch.set_float32_matmul_precision("medium")  # the caller's own
    for choice, said in (("auto", "highest"), ("high", "high")):
        lines = []
        train(tiny_config(tmp_path / choice, epochs=1, matmul_precision=choice), log=lines.append)
        assert any(line.endswith(f"fp32 matrix products {said}") for line in lines)  # no TF32 on a CPU
        assert torch.get_float32_matmul_precision() == "medium"  # the run's ended with it
