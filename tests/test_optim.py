import math

import pytest
import torch
import torch.nn.functional as F

from scalerec.model import build_model
from scalerec.optim import LAMB, LARS, RowwiseAdam, build_optimizer, lr_factor, scaled_lr


def test_scaling_rules_against_hand_computed_values():
    assert scaled_lr(0.005, 4096, 4096 * 16, "linear") == pytest.approx(0.08)
    assert scaled_lr(0.005, 4096, 4096 * 192, "linear") == pytest.approx(0.96)
    assert scaled_lr(0.005, 4096, 4096 * 16, "sqrt") == pytest.approx(0.02)
    assert scaled_lr(0.005, 4096, 4096 * 16, "none") == 0.005
    assert scaled_lr(0.01, 1024, 512, "linear") == pytest.approx(0.005)
    with pytest.raises(ValueError, match="Invalid LR scaling rule"):
        scaled_lr(0.1, 1, 2, "cubic")


def notebook_warmup(iter_i, batches_per_epoch, warmup_epochs=0.1):
    """The GHC 2019 notebook's warmup, verbatim in spirit: the factor it applies to the learning rate."""
    warmup_iters = warmup_epochs * batches_per_epoch
    if iter_i >= warmup_iters:
        return 1.0
    return math.exp(math.log(0.01) * (warmup_iters - iter_i) / warmup_iters)


@pytest.mark.parametrize("step", [0, 1, 5, 12, 24, 25, 26, 100])
def test_exponential_warmup_is_the_notebooks_formula(step):
    batches = 253  # warmup over 25.3 steps, a fraction as in the notebook
    assert lr_factor(step, 0.1 * batches, 1000, "exponential") == pytest.approx(notebook_warmup(step, batches))


def test_warmup_and_decay_hand_computed():
    assert lr_factor(0, 10, 100, "exponential") == pytest.approx(0.01)
    assert lr_factor(5, 10, 100, "exponential") == pytest.approx(0.1)  # exp(log(0.01) / 2)
    assert lr_factor(10, 10, 100, "exponential") == 1.0
    assert lr_factor(0, 4, 100, "linear") == pytest.approx(0.25)
    assert lr_factor(3, 4, 100, "linear") == pytest.approx(1.0)
    assert lr_factor(0, 0.5, 100, "linear") == 1.0 and lr_factor(10, 10.3, 100, "linear") == 1.0  # never above
    assert lr_factor(0, 0, 100, "none", "cosine") == pytest.approx(1.0)
    assert lr_factor(50, 0, 100, "none", "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 0, 100, "none", "cosine") == pytest.approx(0.0)
    assert lr_factor(55, 10, 100, "linear", "cosine") == pytest.approx(0.5)  # halfway through the decay
    assert [lr_factor(s, 0, 100, "none", "step") for s in (49, 50, 74, 75)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert lr_factor(50, 0, 100, "none", "poly") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="Invalid warmup"):
        lr_factor(0, 1, 1, "cubic")


def test_lars_two_steps_against_hand_computed_values():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([p], lr=1.0, momentum=0.9, weight_decay=0.1, eta=0.01, eps=0.0)
    g = torch.tensor([0.6, 0.8])
    p.grad = g.clone()
    opt.step()
    # d = g + 0.1 p = [0.9, 1.2]; trust = 0.01 * 5 / (1 + 0.1 * 5) = 1/30; p -= [0.03, 0.04]
    assert p.tolist() == pytest.approx([2.97, 3.96])
    assert torch.equal(p.grad, g)  # the gradient is never modified in place
    opt.param_groups[0]["lr"] = 0.5  # as a warmup or decay would: the buffer keeps the first step's lr (paper, Alg. 1)
    opt.step()
    d = [0.6 + 0.297, 0.8 + 0.396]
    trust = 0.01 * 4.95 / (1.0 + 0.495)
    buf = [0.9 * 0.03 + 0.5 * trust * d[0], 0.9 * 0.04 + 0.5 * trust * d[1]]
    assert p.tolist() == pytest.approx([2.97 - buf[0], 3.96 - buf[1]])


def test_lars_zero_gradient_with_weight_decay_uses_the_trust_ratio():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([p], lr=1.0, momentum=0.0, weight_decay=0.1, eta=0.01, eps=0.0)
    p.grad = torch.zeros(2)
    opt.step()
    # d = 0.1 p; trust = 0.01 * 5 / (0 + 0.1 * 5) = 0.1: the step is eta * p, not wd * p
    assert p.tolist() == pytest.approx([3 - 0.03, 4 - 0.04])


def test_lars_zero_norm_guard_and_non_adapting_group():
    zero = torch.nn.Parameter(torch.zeros(2))
    bias = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = LARS(
        [{"params": [zero]}, {"params": [bias], "adapt": False, "weight_decay": 0.0}],
        lr=0.5,
        momentum=0.0,
        weight_decay=0.1,
        eta=0.001,
    )
    zero.grad = torch.tensor([1.0, -1.0])
    bias.grad = torch.tensor([2.0, 0.0])
    opt.step()
    assert zero.tolist() == pytest.approx([-0.5, 0.5])  # ||p|| = 0: trust 1, a plain SGD step, no nan
    assert bias.tolist() == pytest.approx([0.0, 1.0])  # plain SGD, no trust ratio


def test_lamb_one_step_against_hand_computed_values():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LAMB([p], lr=0.1, eps=0.0)
    p.grad = torch.tensor([0.6, 0.8])
    opt.step()
    # bias-corrected m = g, v = g^2, so u = g / |g| = [1, 1]; trust = ||p|| / ||u|| = 5 / sqrt(2)
    step = 0.1 * 5 / math.sqrt(2)
    assert p.tolist() == pytest.approx([3 - step, 4 - step])


@pytest.mark.parametrize("name", ["sgd", "adam", "lars", "lamb"])
def test_state_dict_round_trip_resumes_exactly(name):
    def run(steps, opt_state=None, model_state=None):
        torch.manual_seed(0)
        model = build_model("neumf", 10, 12, 4, (8, 8, 4), 0.0)
        opt, _ = build_optimizer(name, model, lr=0.05, weight_decay=1e-4, trust_coefficient=0.02)
        if model_state:
            model.load_state_dict(model_state)
            opt.load_state_dict(opt_state)
        g = torch.Generator().manual_seed(steps if model_state else 0)
        for _ in range(steps):
            u, i = torch.randint(0, 10, (16,), generator=g), torch.randint(0, 12, (16,), generator=g)
            y = torch.randint(0, 2, (16,), generator=g).float()
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(u, i), y).backward()
            opt.step()
        return model, opt

    # 3 steps, save, 3 more with the second data stream == 3 steps + load + 3 steps
    m1, o1 = run(3)
    m2, _ = run(3, o1.state_dict(), m1.state_dict())
    m3, o3 = run(3)
    m3b, o3b = run(3, o3.state_dict(), m3.state_dict())
    for a, b in zip(m2.parameters(), m3b.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


@pytest.mark.parametrize("name, lr", [("sgd", 0.5), ("adam", 0.05), ("lars", 0.5), ("lamb", 0.01)])
def test_every_optimizer_converges_on_a_small_problem(name, lr):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    w_true = torch.randn(8, 1)
    y = (x @ w_true > 0).float().squeeze(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt, _ = build_optimizer(name, model, lr=lr, trust_coefficient=0.02)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    first = loss_fn(model(x).squeeze(1), y).item()
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(model(x).squeeze(1), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first


def test_param_groups_by_rule_and_bad_arguments():
    model = build_model("neumf", 10, 12, 4, (8, 8, 4), 0.0)
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert len(tables) == 4

    def ids(group):
        return {id(p) for p in group["params"]}

    # LARS: matrices and tables adapt and decay; biases adapt without decay.
    opt, description = build_optimizer("lars", model, lr=0.1, weight_decay=1e-4)
    adapt, biases = opt.param_groups
    assert all(p.dim() == 2 for p in adapt["params"]) and adapt["adapt"] and adapt["weight_decay"] == 1e-4
    assert tables <= ids(adapt)
    assert all(p.dim() == 1 for p in biases["params"]) and biases["adapt"] and biases["weight_decay"] == 0
    assert "(embedding tables adapt)" in description and "bias tensors adapt but do not decay" in description
    # LAMB: biases and tables step plainly and never decay; the MLP weight matrices adapt.
    lamb, description = build_optimizer("lamb", model, lr=0.1, weight_decay=1e-4)
    adapt, biases, plain = lamb.param_groups
    assert ids(plain) == tables and not plain["adapt"] and plain["weight_decay"] == 0
    assert not tables & ids(adapt) and adapt["params"] and adapt["adapt"]
    assert all(p.dim() == 1 for p in biases["params"]) and not biases["adapt"]
    assert "embedding tables neither adapt nor decay" in description
    # The option overrides the default either way.
    lamb_adapt, _ = build_optimizer("lamb", model, lr=0.1, adapt_embeddings=True)
    assert tables <= ids(lamb_adapt.param_groups[0]) and len(lamb_adapt.param_groups) == 2
    lars_plain, _ = build_optimizer("lars", model, lr=0.1, adapt_embeddings=False)
    assert ids(lars_plain.param_groups[2]) == tables and not lars_plain.param_groups[2]["adapt"]
    mf_opt, _ = build_optimizer("lamb", build_model("mf", 10, 12, 4, (8, 8, 4), 0.0), lr=0.1, adapt_embeddings=True)
    assert sorted(tuple(p.shape) for p in mf_opt.param_groups[1]["params"]) == [(), (10, 1), (12, 1)]  # bias tables
    for kwargs, match in [
        ({"lr": -1}, "Invalid learning rate"),
        ({"lr": 0.1, "eta": 0}, "trust coefficient"),
        ({"lr": 0.1, "momentum": 1.5}, "Invalid momentum"),
    ]:
        with pytest.raises(ValueError, match=match):
            LARS(model.parameters(), **kwargs)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        LAMB(model.parameters(), lr=0)


def test_the_notebooks_lars_call_shape():
    model = build_model("neumf", 10, 12, 4, (8, 8, 4), 0.0)
    opt = LARS(model.parameters(), lr=0.005 * 192, momentum=0.9, weight_decay=0.0001)
    model(torch.tensor([1]), torch.tensor([2])).sum().backward()
    opt.step()


def test_rowwise_adam_matches_dense_adam_on_touched_rows_and_leaves_the_others():
    torch.manual_seed(0)
    dense = build_model("neumf", 6, 8, 4, (8, 8, 4), 0.0)
    rows = build_model("neumf", 6, 8, 4, (8, 8, 4), 0.0, sparse=True)
    rows.load_state_dict(dense.state_dict())
    dense_opt = torch.optim.Adam(dense.parameters(), lr=0.01, weight_decay=1e-3)
    rows_opt, description = build_optimizer("adam", rows, lr=0.01, weight_decay=1e-3)
    assert isinstance(rows_opt, RowwiseAdam) and "row by row" in description
    every_user, every_item = torch.arange(6).repeat(2), torch.arange(8)[:12].repeat(2)[:12]
    labels = torch.rand(12)
    for _ in range(3):  # every row in every batch: lazy Adam is dense Adam
        for model, opt in ((dense, dense_opt), (rows, rows_opt)):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(every_user, every_item), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert rows.gmf_user.weight.grad.is_sparse
    for (name, a), b in zip(dense.state_dict().items(), rows.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    # A batch without user 5 and item 7 leaves their rows, and their moments, untouched.
    before = {k: v.clone() for k, v in rows.state_dict().items()}
    m_before = rows_opt.state[rows.gmf_user.weight]["exp_avg"].clone()
    loss = rows(torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])).sum()
    rows_opt.zero_grad()
    loss.backward()
    rows_opt.step()
    after = rows.state_dict()
    assert torch.equal(after["gmf_user.weight"][5], before["gmf_user.weight"][5])
    assert torch.equal(after["mlp_item.weight"][7], before["mlp_item.weight"][7])
    assert torch.equal(rows_opt.state[rows.gmf_user.weight]["exp_avg"][5], m_before[5])
    assert not torch.equal(after["gmf_user.weight"][0], before["gmf_user.weight"][0])


def test_rowwise_adam_matches_torch_sparse_adam_on_a_table():
    torch.manual_seed(1)
    a, b = torch.nn.Embedding(10, 3, sparse=True), torch.nn.Embedding(10, 3, sparse=True)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = RowwiseAdam(a.parameters(), lr=0.05), torch.optim.SparseAdam(b.parameters(), lr=0.05)
    for step in range(4):
        # a repeated row sums its gradients; rows out of order are sorted (only distinct ascending ones are not)
        idx = torch.tensor([step, 2, 2, 7]) if step % 2 == 0 else torch.tensor([9, 4, step])
        for table, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            (table(idx) ** 2).sum().backward()
            opt.step()
    assert torch.allclose(a.weight, b.weight, atol=1e-6)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        RowwiseAdam(a.parameters(), lr=0)
    with pytest.raises(ValueError, match="need --optimizer adam"):
        build_optimizer("lamb", build_model("neumf", 6, 8, 4, (8, 8, 4), 0.0, sparse=True), lr=0.1)


def _scaled_steps(name: str, scaler, overflow_at: int | None = None, left_out: int | None = None):
    """Four steps of `name` on a small NeuMF through `scaler` (fp32 compute: a power-of-two scale is exact), with
    an inf in one gradient at step `overflow_at`, or no step at all at `left_out`; (the weights after each step,
    the skipped flags, the optimizer)."""
    torch.manual_seed(0)
    model = build_model("neumf", 30, 20, 8, [16, 16, 8], 0.0)
    opt, _ = build_optimizer(name, model, 0.05, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(1)
    weights, skipped = [], []
    for step in range(4):
        users, items = torch.randint(0, 30, (32,), generator=gen), torch.randint(0, 20, (32,), generator=gen)
        labels = torch.randint(0, 2, (32,), generator=gen).float()
        if step == left_out:
            weights.append({k: v.clone() for k, v in model.state_dict().items()})
            continue
        opt.zero_grad()
        scaler.scale(F.binary_cross_entropy_with_logits(model(users, items), labels)).backward()
        if step == overflow_at:
            model.predict.weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        skipped.append(float(sum(scaler._found_inf_per_device(opt).values())) if scaler.is_enabled() else 0.0)
        scaler.update()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    return weights, skipped, opt


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_lars_and_lamb_take_fp16_loss_scaling_on_the_device(name, monkeypatch):
    plain, _, _ = _scaled_steps(name, torch.amp.GradScaler("cpu", enabled=False))

    def no_sync(self):
        raise AssertionError("a host sync in the optimizer step")

    real_step = torch.amp.GradScaler.step

    def step_without_sync(self, optimizer, *args, **kwargs):  # GradScaler's own skip would call .item()
        monkeypatch.setattr(torch.Tensor, "item", no_sync)
        try:
            return real_step(self, optimizer, *args, **kwargs)
        finally:
            monkeypatch.undo()

    monkeypatch.setattr(torch.amp.GradScaler, "step", step_without_sync)
    scaled, skipped, _ = _scaled_steps(name, torch.amp.GradScaler("cpu", init_scale=2.0**10))
    monkeypatch.undo()
    assert skipped == [0.0] * 4
    for a, b in zip(plain, scaled):  # unscaled on the device, exactly: the same weights as without scaling
        assert all(torch.equal(a[k], b[k]) for k in a)
    over, skipped, opt = _scaled_steps(name, torch.amp.GradScaler("cpu", init_scale=2.0**10), overflow_at=1)
    assert skipped == [0.0, 1.0, 0.0, 0.0]
    # the overflowing step changed nothing, weights or state: the run goes on as one that never took it
    without, _, _ = _scaled_steps(name, torch.amp.GradScaler("cpu", init_scale=2.0**10), left_out=1)
    for a, b in zip(over, without):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(over[1][k], over[2][k]) for k in over[1])
    if name == "lamb":  # three steps taken, counted on the device
        assert all(float(s["step"]) == 3.0 for s in opt.state.values())
