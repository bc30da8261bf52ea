"""--l2: the squared norms of the embedding rows each sample uses, added to its loss."""

import contextlib

import pytest
import torch

from scalerec.epoch import accumulated, row_penalty, train_step
from scalerec.model import build_model
from tests.helpers import SYNTHETIC, run_main, tiny

pytestmark = pytest.mark.usefixtures("isolated")  # the data cache in tmp_path, not the user's

USERS = torch.tensor([0, 0, 2, 5, 0, 2])
ITEMS = torch.tensor([1, 1, 1, 3, 4, 6])


@pytest.mark.parametrize("name", ["mf", "neumf", "gmf"])
@pytest.mark.parametrize("sparse", [False, True])
def test_row_penalty_is_the_samples_squared_rows(name, sparse):
    model = build_model(name, 7, 8, 4, (8, 8, 4), 0.0, sparse=sparse)
    penalty = row_penalty(model, USERS, ITEMS)
    penalty.backward()
    got = [t.weight.grad.to_dense() if sparse else t.weight.grad for s in ("user", "item") for t in model.tables(s)]
    model.zero_grad(set_to_none=True)
    expected = sum(
        t.weight[ids].square().sum() for s, ids in (("user", USERS), ("item", ITEMS)) for t in model.tables(s)
    )
    expected.backward()
    torch.testing.assert_close(penalty, expected)
    for g, t in zip(got, [t for s in ("user", "item") for t in model.tables(s)]):
        torch.testing.assert_close(g, t.weight.grad.to_dense() if sparse else t.weight.grad)
    assert len(got) == {"mf": 4, "neumf": 4, "gmf": 2}[name]  # mf: factors and biases; neumf: GMF's and MLP's


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("micro", [None, 4])
def test_an_sgd_step_shrinks_each_row_once_per_sample_that_uses_it(micro, device):
    """With plain SGD, the step with l2 differs from the step without by -lr * l2 * count / batch * row, for every
    row of every table, whatever the micro-batches and the device (a GPU adds the penalty slice by slice)."""
    labels = torch.tensor([1.0, 0, 1, 0, 0, 1], device=device)
    users, items = USERS.to(device), ITEMS.to(device)
    lr, l2, after = 0.5, 0.1, {}
    for reg in (0.0, l2):
        torch.manual_seed(0)
        model = build_model("mf", 7, 8, 4, (8, 8, 4), 0.0).to(device)
        start = {s: model.tables(s)[0].weight.detach().cpu().clone() for s in ("user", "item")}
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        scaler = torch.amp.GradScaler(device, enabled=False)
        loss, _ = train_step(model, opt, scaler, contextlib.nullcontext(), users, items, labels, micro, l2=reg)
        after[reg] = ({s: model.tables(s)[0].weight.detach().cpu().clone() for s in ("user", "item")}, loss)
    for side, ids in (("user", USERS), ("item", ITEMS)):
        counts = torch.bincount(ids, minlength=len(start[side])).float()[:, None]
        shrink = -lr * l2 * counts / len(labels) * start[side]
        torch.testing.assert_close(after[l2][0][side] - after[0.0][0][side], shrink)
    assert after[l2][1] == after[0.0][1]  # the loss logged is the cross-entropy alone


def test_a_run_with_l2_ends_with_smaller_embeddings(tmp_path, capsys):
    norms = {}
    for l2 in ("0", "1"):
        args = ["train", *SYNTHETIC, *tiny(tmp_path / l2), "--model", "mf", "--optimizer", "sgd", "--lr", "5"]
        assert run_main(capsys, [*args, "--l2", l2])[0] == 0
        weights = torch.load(tmp_path / l2 / "checkpoint.pt", weights_only=False)["model"]
        norms[l2] = weights["user.weight"].norm() + weights["item.weight"].norm()
    assert norms["1"] < 0.9 * norms["0"]


def test_slices_on_a_gpu_add_up_to_the_whole_batchs_penalty():
    """`accumulated`, the GPU's micro-batch path, run here on the CPU: its slices' cross-entropy and row penalty give
    the gradients of the whole batch's."""
    labels = torch.tensor([1.0, 0, 1, 0, 0, 1])
    grads = []
    for slices in (False, True):
        torch.manual_seed(0)
        model = build_model("neumf", 7, 8, 4, (8, 8, 4), 0.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        if slices:
            accumulated(model, scaler, contextlib.nullcontext(), USERS, ITEMS, labels, 4, l2=0.1)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.0)
            train_step(model, opt, scaler, contextlib.nullcontext(), USERS, ITEMS, labels, None, l2=0.1)
        grads.append([p.grad.clone() for p in model.parameters()])
    for whole, sliced in zip(*grads, strict=True):
        torch.testing.assert_close(sliced, whole)
