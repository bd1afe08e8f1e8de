"""Activations (prelu, step) and initializers (zeros, constant, identity, lsuv, greedy_rbm) do
what their formulas say; the data-free initializers reach recurrent weights too."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlbench.builtin import activations, initializers
from dlbench.builtin.rbm import RBM, greedy_rbm


def mlp(activation=nn.ReLU, widths=(12, 16, 16, 4)) -> nn.Sequential:
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers, nn.Linear(widths[-2], widths[-1]))


def train_steps(model, x, y, steps=5, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("init", ["zeros", "constant"])
def test_symmetric_inits_keep_every_unit_of_a_layer_identical(init):
    torch.manual_seed(0)
    model = mlp(nn.Tanh)
    getattr(initializers, init)(model, None)
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    train_steps(model, x, y)
    for layer in (model[0], model[2]):
        rows = layer.weight
        assert torch.equal(rows, rows[:1].expand_as(rows))  # the symmetry is never broken
    assert not torch.equal(model[4].bias, torch.zeros(4))  # yet the output layer learned something


def test_identity_sets_recurrent_matrices_per_gate_and_square_linears():
    torch.manual_seed(0)
    model = nn.ModuleDict({"rnn": nn.RNN(3, 5), "gru": nn.GRU(3, 5), "lstm": nn.LSTM(3, 5, num_layers=2),
                           "square": nn.Linear(5, 5), "head": nn.Linear(5, 2)})
    initializers.identity(model, None, gain=0.5, then="orthogonal")
    eye = 0.5 * torch.eye(5)
    assert torch.equal(model["rnn"].weight_hh_l0, eye)
    assert torch.equal(model["gru"].weight_hh_l0, eye.repeat(3, 1))
    assert torch.equal(model["lstm"].weight_hh_l1, eye.repeat(4, 1))
    assert torch.equal(model["lstm"].bias_hh_l1, torch.zeros(20))
    assert torch.equal(model["square"].weight, eye)
    head = model["head"].weight  # not square: left as `then` made it
    assert torch.allclose(head @ head.T, torch.eye(2), atol=1e-5)


def test_data_free_initializers_reach_recurrent_weights_and_zero_their_biases():
    torch.manual_seed(0)
    gru = nn.GRU(3, 5)
    initializers.orthogonal(gru, None)
    w = gru.weight_hh_l0
    assert torch.allclose(w.T @ w, torch.eye(5), atol=1e-5)  # [15, 5]: orthonormal columns
    assert torch.equal(gru.bias_ih_l0, torch.zeros(15)) and torch.equal(gru.bias_hh_l0, torch.zeros(15))


def test_an_mlp_is_initialized_bit_for_bit_as_before_recurrent_support():
    torch.manual_seed(3)
    model = mlp()
    initializers.xavier(model, None)
    torch.manual_seed(3)
    expected = mlp()
    for layer in (expected[0], expected[2], expected[4]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    for a, b in zip(model.parameters(), expected.parameters()):
        assert torch.equal(a, b)


def test_lsuv_gives_every_layer_unit_output_variance_on_the_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), *mlp(nn.ReLU, (40, 64, 64, 64, 10)))
    data = SimpleNamespace(x_train=5 * torch.randn(300, 40) + 2)
    initializers.lsuv(model, data, tolerance=0.05, batch_size=256)
    x = data.x_train[:256]
    for module in model:
        x = module(x)
        if isinstance(module, nn.Linear):
            assert abs(x.var().item() - 1) < 0.05
    assert model.training  # left in the mode it was in


def bars(n=256, side=4, seed=0) -> torch.Tensor:
    """Binary images of one horizontal or vertical bar: a classic RBM toy."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, side, side)
    for i in range(n):
        k = int(torch.randint(side, (1,), generator=g))
        if torch.rand(1, generator=g) < 0.5:
            out[i, k, :] = 1
        else:
            out[i, :, k] = 1
    return out.flatten(1)


def test_contrastive_divergence_lowers_the_reconstruction_error():
    torch.manual_seed(0)
    v = bars()
    layer = nn.Linear(16, 8)
    nn.init.normal_(layer.weight, 0, 0.01)
    rbm = RBM(layer, gaussian=False)
    before = rbm.reconstruction_error(v)
    for _ in range(30):
        for idx in torch.randperm(len(v)).split(32):
            rbm.contrastive_divergence(v[idx], k=1, lr=0.3)
    assert rbm.reconstruction_error(v) < 0.2 * before  # 0.25 (all pixels at 0.5) -> about 0.03


def test_greedy_rbm_initializes_each_hidden_layer_from_its_rbm():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 8), nn.Sigmoid()),
                                         nn.Sequential(nn.Linear(8, 6), nn.Sigmoid())])
            self.head = nn.Linear(6, 2)

        @property
        def hidden_blocks(self):
            return [nn.Sequential(nn.Flatten(), *self.blocks[0]), self.blocks[1]]

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    data = SimpleNamespace(x_train=bars().view(-1, 4, 4))

    def initialized(**options):
        torch.manual_seed(0)
        net = Net()
        greedy_rbm(net, data, **options)
        return net

    untrained, trained = initialized(epochs=0), initialized(epochs=20, lr=0.1, visible="bernoulli")
    for i in range(2):
        assert not torch.equal(untrained.blocks[i][0].weight, trained.blocks[i][0].weight)
    assert torch.equal(untrained.head.weight, trained.head.weight)  # the output layer keeps `then`'s init
    first = RBM(trained.blocks[0][0], gaussian=False)
    assert first.reconstruction_error(data.x_train.flatten(1)) < RBM(untrained.blocks[0][0], gaussian=False) \
        .reconstruction_error(data.x_train.flatten(1))
    assert all(torch.equal(a, b) for a, b in zip(trained.parameters(), initialized(
        epochs=20, lr=0.1, visible="bernoulli").parameters()))  # the same seed, the same weights


def test_greedy_rbm_refuses_blocks_that_do_not_start_with_a_linear_layer():
    class Conv(nn.Module):
        hidden_blocks = [nn.Sequential(nn.Conv1d(1, 2, 3))]

    with pytest.raises(ValueError, match="does not start with a Linear layer"):
        greedy_rbm(Conv(), SimpleNamespace(x_train=torch.randn(4, 1, 8)))


def test_step_passes_no_gradient_below_it_and_its_autograd_is_exact():
    x = torch.tensor([-1.5, -0.1, 0.2, 3.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(activations.HeavisideFunction.apply, (x,))
    torch.manual_seed(0)
    model = mlp(activations.Step)
    F.cross_entropy(model(torch.randn(16, 12)), torch.randint(0, 4, (16,))).backward()
    assert torch.count_nonzero(model[0].weight.grad) == 0 and torch.count_nonzero(model[2].weight.grad) == 0
    assert torch.count_nonzero(model[4].weight.grad) > 0  # only the output layer can learn
    assert torch.equal(activations.step()(torch.tensor([-1.0, 0.0, 2.0])), torch.tensor([0.0, 0.0, 1.0]))


def test_prelu_learns_its_slope():
    torch.manual_seed(0)
    model = mlp(activations.prelu)
    slope = model[1].weight.detach().clone()
    assert torch.equal(slope, torch.tensor([0.25]))
    train_steps(model, torch.randn(32, 12), torch.randint(0, 4, (32,)))
    assert not torch.equal(model[1].weight, slope)
