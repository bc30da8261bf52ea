import pytest
import torch

from scalerec.kernels import linear, onednn_available, set_cpu_matmul
from scalerec.model import MF, NeuMF, build_model

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN")
BACKENDS = [False, pytest.param(True, marks=needs_onednn)]  # the CPU's products by BLAS, and by oneDNN


@pytest.mark.parametrize("name", ["neumf", "gmf", "mlp", "mf"])
def test_forward_gives_one_logit_per_pair(name):
    model = build_model(name, 10, 20, 8, (16, 32, 8), 0.0)
    out = model(torch.tensor([0, 9, 3]), torch.tensor([19, 0, 5]))
    assert out.shape == (3,)
    assert out.dtype == torch.float32


def test_neumf_shapes_and_init():
    torch.manual_seed(0)
    m = NeuMF(1000, 2000, factors=64, layers=(256, 256, 128, 64))
    assert m.gmf_user.weight.shape == (1000, 64)
    assert m.mlp_item.weight.shape == (2000, 128)
    assert m.first_user.weight.shape == (256, 128) and m.first_item.weight.shape == (256, 128)
    assert [layer.weight.shape for layer in m.hidden] == [(128, 256), (64, 128)]
    assert m.predict.weight.shape == (1, 128)
    assert m.gmf_user.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert abs(m.mlp_item.weight.mean().item()) < 1e-3
    # Glorot uniform over the whole first layer: bound sqrt(6 / (fan_in + fan_out)) with fan_in = 256
    bound = (6 / (256 + 256)) ** 0.5
    w = torch.cat([m.first_user.weight, m.first_item.weight], 1)
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.95 * bound
    assert m.hidden[0].bias.abs().sum().item() == 0


def test_split_first_layer_equals_linear_on_concatenation():
    torch.manual_seed(0)
    m = NeuMF(5, 6, factors=4, layers=(8, 6, 3), gmf=False)
    u, i = torch.tensor([1, 4]), torch.tensor([5, 0])
    concat = torch.cat([m.mlp_user(u), m.mlp_item(i)], 1)
    w = torch.cat([m.first_user.weight, m.first_item.weight], 1)
    full = torch.nn.functional.linear(concat, w, m.first_user.bias)
    assert torch.allclose(m.first_user(m.mlp_user(u)) + m.first_item(m.mlp_item(i)), full, atol=1e-6)


def test_gmf_alone_is_a_weighted_elementwise_product():
    torch.manual_seed(0)
    m = build_model("gmf", 5, 6, 4, (8, 4), 0.0)
    u, i = torch.tensor([2]), torch.tensor([3])
    expected = (m.gmf_user(u) * m.gmf_item(i)) @ m.predict.weight.T + m.predict.bias
    assert torch.allclose(m(u, i), expected.squeeze(-1))


def test_mf_is_dot_product_plus_biases():
    m = MF(3, 4, factors=2)
    with torch.no_grad():
        m.user.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]]))
        m.item.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, -1.0]]))
        m.user_bias.weight.fill_(0.5)
        m.item_bias.weight.fill_(-0.25)
        m.bias.fill_(1.0)
    out = m(torch.tensor([0, 2]), torch.tensor([3, 1]))
    assert out.tolist() == pytest.approx([1 - 2 + 0.5 - 0.25 + 1, 6 + 0.5 - 0.25 + 1])


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    m = build_model("mlp", 5, 5, 4, (8, 8, 4), 0.5)
    u, i = torch.arange(5), torch.arange(5)
    m.eval()
    assert torch.equal(m(u, i), m(u, i))
    m.train()
    outs = {tuple(m(u, i).tolist()) for _ in range(5)}
    assert len(outs) > 1


def test_gradients_reach_every_parameter():
    m = build_model("neumf", 4, 4, 4, (8, 8, 4), 0.0)
    m(torch.tensor([0, 1]), torch.tensor([2, 3])).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("name", ["neumf", "gmf", "mlp"])
def test_forward_is_interact_of_the_encodings_and_trains_both_halves(name):
    torch.manual_seed(0)
    m = build_model(name, 7, 9, 4, (8, 16, 4), 0.0)
    users, items = torch.tensor([0, 3, 6, 6]), torch.tensor([8, 0, 2, 2])
    assert torch.allclose(m(users, items), m.interact(m.encode_users(users), m.encode_items(items)), atol=1e-6)
    m(users, items).sum().backward()
    if name != "gmf":
        assert m.first_user.weight.grad.abs().sum() > 0 and m.first_item.weight.grad.abs().sum() > 0
        assert m.first_user.bias.grad is not None


@pytest.mark.parametrize("name", ["neumf", "gmf", "mlp", "mf"])
def test_training_by_distinct_rows_gives_the_per_sample_gradients(name):
    torch.manual_seed(0)
    m = build_model(name, 7, 9, 4, (8, 16, 4), 0.0)
    users, items = torch.tensor([0, 3, 6, 6, 3, 1]), torch.tensor([8, 0, 2, 2, 5, 8])
    m(users, items).pow(2).sum().backward()  # on the CPU: each distinct user and item encoded once
    by_rows = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.interact(m.encode_users(users), m.encode_items(items)).pow(2).sum().backward()  # per sample
    for a, b in zip(by_rows, (p.grad for p in m.parameters())):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", ["neumf", "mf"])
def test_sparse_tables_get_each_rows_gradient_once(name):
    torch.manual_seed(0)
    m = build_model(name, 7, 9, 4, (8, 16, 4), 0.0, sparse=True)
    users, items = torch.tensor([0, 3, 6, 6, 3, 1]), torch.tensor([8, 0, 2, 2, 5, 8])
    m(users, items).pow(2).sum().backward()  # distinct rows: _EncodeRows
    tables = [mod.weight for mod in m.modules() if isinstance(mod, torch.nn.Embedding)]
    grads = [t.grad for t in tables]
    for g in grads:  # one row per distinct id, ascending: nothing for RowwiseAdam to coalesce
        assert g.is_sparse and bool((g._indices()[0].diff() > 0).all())
    torch.manual_seed(0)
    m = build_model(name, 7, 9, 4, (8, 16, 4), 0.0, sparse=True, variant="embedding")  # the same weights
    tables = [mod.weight for mod in m.modules() if isinstance(mod, torch.nn.Embedding)]
    m(users, items).pow(2).sum().backward()  # nn.Embedding's backward: one row per sample, summed by coalesce
    for fast, t in zip(grads, tables):
        slow = t.grad.coalesce()
        assert torch.equal(fast._indices(), slow.indices())
        assert fast._values().abs().sum() > 0 and torch.allclose(fast._values(), slow.values(), atol=1e-6)


def _logits_and_grads(model, users, items, weights):
    model.zero_grad()
    out = model(users, items)
    (out * weights).sum().backward()  # a different gradient per sample, some negative
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("onednn", BACKENDS)
@pytest.mark.parametrize(
    "name, layers", [("neumf", (8, 16, 4)), ("neumf", (8, 6)), ("gmf", (8, 4)), ("mlp", (16, 12, 8, 4))]
)
def test_the_hand_written_backward_is_autograds(name, layers, onednn):
    torch.manual_seed(0)
    m = build_model(name, 7, 9, 4, layers, 0.0)
    set_cpu_matmul(m, "onednn" if onednn else "blas")  # the node's products; autograd's below are nn.Linear's
    torch.manual_seed(0)
    plain = build_model(name, 7, 9, 4, layers, 0.0, variant="plain")  # autograd's every node, the same weights
    users, items = torch.randint(0, 7, (40,)), torch.randint(0, 9, (40,))
    weights = torch.randn(40)
    fast = _logits_and_grads(m, users, items, weights)
    slow = _logits_and_grads(plain, users, items, weights)
    assert torch.allclose(fast[0], slow[0], atol=1e-6)
    for a, b in zip(fast[1], slow[1]):
        assert b.abs().sum() > 0 and torch.allclose(a, b, atol=1e-6)


def test_the_hand_written_backward_on_rows_gathered_already():
    from scalerec.kernels import encode_rows, gather, interact_rows

    torch.manual_seed(0)
    m = build_model("neumf", 7, 9, 4, (8, 16, 4), 0.0)
    users, items = torch.randint(0, 7, (30,)), torch.randint(0, 9, (30,))
    (user, u_at), (item, i_at) = encode_rows(m, users, items)
    rows = [t.detach().index_select(0, at).requires_grad_() for t, at in zip(user + item, [u_at] * 2 + [i_at] * 2)]
    out = interact_rows(m, tuple(rows[:2]), tuple(rows[2:]), None, None)
    out.pow(2).sum().backward()
    expected = [r.detach().clone().requires_grad_() for r in rows]
    m.interact(tuple(expected[:2]), tuple(expected[2:])).pow(2).sum().backward()
    for a, b in zip(rows, expected):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
    assert torch.allclose(out, m.interact(gather(user, u_at), gather(item, i_at)), atol=1e-6)


def test_dropout_and_autocast_take_autograds_path():
    torch.manual_seed(0)
    m = build_model("neumf", 7, 9, 4, (8, 16, 4), 0.5)
    torch.manual_seed(0)
    autograds = build_model("neumf", 7, 9, 4, (8, 16, 4), 0.5, variant="autograd")
    users, items = torch.randint(0, 7, (40,)), torch.randint(0, 9, (40,))
    torch.manual_seed(1)
    dropped = m(users, items)
    torch.manual_seed(1)
    assert torch.equal(dropped, autograds(users, items))  # the same dropout masks: the same path
    m.dropout = 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(users, items)
    assert out.dtype == torch.bfloat16 and out.grad_fn.name() != "_PairHeadBackward"
    assert m(users, items).grad_fn.name() == "_PairHeadBackward"


@pytest.mark.parametrize("n", [10, 10_000])  # a mark per row; torch.unique for a table much larger than the batch
def test_unique_rows(n):
    from scalerec.kernels import unique_rows

    ids = torch.tensor([7, 2, 7, 9, 0, 2, 2])
    rows, at = unique_rows(ids, n)
    assert rows.tolist() == [0, 2, 7, 9]
    assert torch.equal(rows[at], ids)


@pytest.mark.parametrize("name", ["neumf", "gmf", "mlp"])
def test_the_gpus_per_sample_forward_is_the_same_function(name):
    torch.manual_seed(0)
    m = build_model(name, 7, 9, 4, (8, 16, 4), 0.0)
    users, items = torch.tensor([0, 3, 6, 6, 3, 1]), torch.tensor([8, 0, 2, 2, 5, 8])
    m(users, items).pow(2).sum().backward()  # the CPU's: by distinct rows
    by_rows = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    out = m.forward_per_sample(users, items)
    out.pow(2).sum().backward()
    assert torch.allclose(out, m(users, items), atol=1e-6)
    for a, b in zip(by_rows, (p.grad for p in m.parameters())):
        assert torch.allclose(a, b, atol=1e-6)


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
def test_onednns_products_are_blas(relu):
    torch.manual_seed(0)
    x, w, b = torch.randn(50, 24), torch.randn(16, 24), torch.randn(16)
    expected = torch.nn.functional.linear(x, w, b)
    expected = expected.relu() if relu else expected
    assert torch.allclose(linear(x, w, b, onednn=True, relu=relu), expected, atol=1e-5)
    d = torch.randn(50, 16)  # a backward's products: d @ W by a transposed view, d.T @ x, a sum over the rows
    assert torch.allclose(linear(d, w.T, onednn=True), d @ w, atol=1e-5)
    assert torch.allclose(linear(d.T, x.T, onednn=True), d.T @ x, atol=1e-5)
    w.requires_grad_()  # a product autograd must see: BLAS's, whose backward reaches the weight
    linear(x, w, b, onednn=True, relu=relu).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    # oneDNN refuses empty tensors: BLAS takes them
    with torch.no_grad():
        assert linear(x[:0], w, b, onednn=True).shape == (0, 16)
    assert torch.equal(linear(d[:0].T, x[:0].T, onednn=True), torch.zeros(16, 24))


@needs_onednn
def test_scoring_by_onednn_is_the_same_function():
    torch.manual_seed(0)
    m = build_model("neumf", 7, 9, 4, (8, 16, 4), 0.0).eval()
    users, items = torch.randint(0, 7, (30,)), torch.randint(0, 9, (30,))
    with torch.no_grad():
        scores = {}
        for onednn in (False, True):
            set_cpu_matmul(m, "onednn" if onednn else "blas")
            user, item = m.encode_users(torch.arange(7)), m.encode_items(torch.arange(9))
            scores[onednn] = (m(users, items), m.score_grid(user, item))
    assert torch.allclose(scores[True][0], scores[False][0], atol=1e-5)
    assert torch.allclose(scores[True][1], scores[False][1], atol=1e-5)
    assert torch.allclose(scores[True][1][users, items], scores[True][0], atol=1e-5)


@needs_onednn
def test_the_flag_places_the_steps_products(monkeypatch):
    op, calls = torch.ops.mkldnn._linear_pointwise, []

    def counted(*args):
        calls.append(args[0].shape)
        return op(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counted)
    m = build_model("neumf", 7, 9, 4, (8, 16, 4), 0.0)
    users, items = torch.randint(0, 7, (40,)), torch.randint(0, 9, (40,))
    for onednn in (True, False):
        calls.clear()
        set_cpu_matmul(m, "onednn" if onednn else "blas")
        m(users, items).sum().backward()  # the training step's nodes: _EncodeRows and _PairHead
        # forward: each side's half of the first layer, the hidden layer; backward: the hidden layer's two
        # products, each side's d_x (the halves' weight gradients stay BLAS's)
        assert len(calls) == (7 if onednn else 0)


@pytest.mark.parametrize("name", ["neumf", "mf"])
def test_init_std_sets_the_embeddings_spread(name):
    torch.manual_seed(0)
    model = build_model(name, 500, 400, 16, (32, 16, 8), 0.0, init_std=0.1)
    tables = [t for side in ("user", "item") for t in model.tables(side) if t.embedding_dim > 1]  # not mf's biases
    for t in tables:
        assert abs(float(t.weight.detach().std()) - 0.1) < 0.005
    assert (
        abs(float(build_model(name, 500, 400, 16, (32, 16, 8), 0.0).tables("user")[0].weight.detach().std()) - 0.01)
        < 5e-4
    )
