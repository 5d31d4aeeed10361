"""Ghost BatchNorm: equivalence with per-chunk BatchNorm, running statistics, conversion, errors.

The reference throughout is the definition from the module docstring: split the batch into
ghosts (``[0, g)``, ``[g, 2g)``, ...; a remainder of >= 2 samples is its own ghost, a remainder
of one sample joins the previous ghost, a batch smaller than ``g`` is one ghost) and apply
plain training-mode ``F.batch_norm`` to every chunk.
"""

from __future__ import annotations

import copy
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dist_train.nn.ghost_bn import (
    GhostBatchError,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GhostBatchNorm3d,
    _ghost_layout,
    convert_to_ghost_bn,
    has_ghost_bn,
)

# ---------------------------------------------------------------------------------------------
# Reference implementation
# ---------------------------------------------------------------------------------------------


def ghost_sizes(batch: int, ghost: int) -> list[int]:
    """Samples per ghost, straight from the spec."""
    if batch < ghost:
        return [batch]
    sizes = [ghost] * (batch // ghost)
    remainder = batch % ghost
    if remainder >= 2:
        sizes.append(remainder)
    elif remainder == 1:
        sizes[-1] += 1
    return sizes


def reference_ghost_bn(x, ghost, weight=None, bias=None, eps=1e-5):
    chunks = x.split(ghost_sizes(x.shape[0], ghost))
    return torch.cat([F.batch_norm(c, None, None, weight, bias, training=True, eps=eps) for c in chunks])


def channel_view(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *) -> (C, N * prod(*)): every value of a channel in one row."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def hand_stats(x: torch.Tensor, ghost: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over ghosts of the ghost means, and of the ghost unbiased variances (each with its own n)."""
    chunks = x.split(ghost_sizes(x.shape[0], ghost))
    means = torch.stack([channel_view(c).mean(1) for c in chunks])
    variances = torch.stack([channel_view(c).var(1, correction=1) for c in chunks])
    return means.mean(0), variances.mean(0)


def randomise_affine(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        if module.weight is not None:
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator))


# ---------------------------------------------------------------------------------------------
# Ghost layout
# ---------------------------------------------------------------------------------------------


def test_ghost_sizes_helper_matches_spec_examples():
    assert ghost_sizes(16, 4) == [4, 4, 4, 4]
    assert ghost_sizes(17, 4) == [4, 4, 4, 5]  # one left over joins the last ghost
    assert ghost_sizes(18, 4) == [4, 4, 4, 4, 2]  # two left over are their own ghost
    assert ghost_sizes(15, 8) == [8, 7]
    assert ghost_sizes(3, 8) == [3]  # smaller than a ghost: one ghost
    assert ghost_sizes(9, 8) == [9]


@pytest.mark.parametrize("ghost", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("batch", [*range(2, 41), 63, 64, 65, 66])
def test_ghost_layout_matches_spec(batch, ghost):
    index, counts = _ghost_layout(batch, ghost, torch.device("cpu"))
    sizes = ghost_sizes(batch, ghost)
    assert counts.tolist() == sizes
    expected_index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    assert torch.equal(index, expected_index)


# ---------------------------------------------------------------------------------------------
# Numerical equivalence with per-chunk BatchNorm: output and all gradients
# ---------------------------------------------------------------------------------------------

CL = torch.channels_last
CL3 = torch.channels_last_3d

# (module class, input shape, ghost size, memory format or None)
EQUIVALENCE_CASES = [
    # BatchNorm1d on (N, C)
    pytest.param(GhostBatchNorm1d, (16, 5), 4, None, id="1d-NC-even"),
    pytest.param(GhostBatchNorm1d, (17, 5), 4, None, id="1d-NC-rem1"),
    pytest.param(GhostBatchNorm1d, (18, 3), 4, None, id="1d-NC-rem2"),
    pytest.param(GhostBatchNorm1d, (15, 3), 8, None, id="1d-NC-rem-g-1"),
    pytest.param(GhostBatchNorm1d, (3, 4), 8, None, id="1d-NC-smaller"),
    pytest.param(GhostBatchNorm1d, (33, 2), 16, None, id="1d-NC-g16-rem1"),
    pytest.param(GhostBatchNorm1d, (13, 6), 2, None, id="1d-NC-g2-rem1"),
    # BatchNorm1d on (N, C, L)
    pytest.param(GhostBatchNorm1d, (12, 3, 7), 2, None, id="1d-NCL-g2-even"),
    pytest.param(GhostBatchNorm1d, (13, 3, 7), 2, None, id="1d-NCL-g2-rem1"),
    pytest.param(GhostBatchNorm1d, (10, 4, 5), 4, None, id="1d-NCL-rem2"),
    pytest.param(GhostBatchNorm1d, (11, 4, 5), 4, None, id="1d-NCL-rem-g-1"),
    pytest.param(GhostBatchNorm1d, (5, 2, 9), 16, None, id="1d-NCL-smaller"),
    # BatchNorm2d
    pytest.param(GhostBatchNorm2d, (16, 3, 5, 5), 4, None, id="2d-even"),
    pytest.param(GhostBatchNorm2d, (17, 3, 4, 6), 8, None, id="2d-rem1"),
    pytest.param(GhostBatchNorm2d, (18, 2, 3, 3), 16, None, id="2d-g16-rem2"),
    pytest.param(GhostBatchNorm2d, (15, 3, 4, 4), 8, None, id="2d-rem-g-1"),
    pytest.param(GhostBatchNorm2d, (5, 3, 4, 4), 16, None, id="2d-smaller"),
    pytest.param(GhostBatchNorm2d, (7, 3, 3, 3), 2, None, id="2d-g2-rem1"),
    pytest.param(GhostBatchNorm2d, (32, 4, 2, 2), 16, None, id="2d-g16-even"),
    pytest.param(GhostBatchNorm2d, (12, 4, 5, 3), 4, CL, id="2d-channels_last-even"),
    pytest.param(GhostBatchNorm2d, (11, 4, 3, 3), 4, CL, id="2d-channels_last-rem-g-1"),
    pytest.param(GhostBatchNorm2d, (9, 5, 2, 3), 8, CL, id="2d-channels_last-rem1"),
    # BatchNorm3d
    pytest.param(GhostBatchNorm3d, (8, 2, 3, 4, 5), 4, None, id="3d-even"),
    pytest.param(GhostBatchNorm3d, (9, 2, 2, 3, 3), 4, None, id="3d-rem1"),
    pytest.param(GhostBatchNorm3d, (10, 3, 2, 2, 2), 8, None, id="3d-rem2"),
    pytest.param(GhostBatchNorm3d, (6, 2, 2, 2, 2), 16, None, id="3d-smaller"),
    pytest.param(GhostBatchNorm3d, (10, 3, 2, 3, 4), 4, CL3, id="3d-channels_last_3d-rem2"),
    pytest.param(GhostBatchNorm3d, (8, 3, 2, 2, 3), 2, CL3, id="3d-channels_last_3d-g2"),
]

TOLERANCES = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
}


# Every implementation is checked on CPU: "chunks" (the CPU default: ATen's kernels per ghost),
# "vectorised" (the default elsewhere, e.g. CUDA) and "traced" (what torch.compile traces).
IMPLEMENTATIONS = ["chunks", "vectorised", "traced"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize(("cls", "shape", "ghost", "memory_format"), EQUIVALENCE_CASES)
def test_matches_per_chunk_batch_norm(cls, shape, ghost, memory_format, affine, dtype, implementation):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, ghost)).encode()))  # stable across runs
    channels = shape[1]
    module = cls(channels, ghost, eps=1e-4, affine=affine).to(dtype)
    module._implementation = implementation
    randomise_affine(module, gen)

    # float64: values off zero mean; float32: centred data (off-centre float32: test_float32_accuracy_with_large_mean)
    offset = 0.5 if dtype == torch.float64 else 0.0
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + offset
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    x_ref = x.detach().clone().requires_grad_()
    x = x.requires_grad_()
    grad_out = torch.randn(shape, generator=gen, dtype=dtype)

    out = module(x)
    assert out.shape == x.shape and out.dtype == dtype
    if memory_format is not None:
        assert out.is_contiguous(memory_format=memory_format)
    out.backward(grad_out)

    w_ref = module.weight.detach().clone().requires_grad_() if affine else None
    b_ref = module.bias.detach().clone().requires_grad_() if affine else None
    expected = reference_ghost_bn(x_ref, ghost, w_ref, b_ref, eps=1e-4)
    expected.backward(grad_out)

    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out, expected, **tol)
    torch.testing.assert_close(x.grad, x_ref.grad, **tol)
    if affine:
        # weight/bias gradients are sums over the whole batch: scale the absolute tolerance a bit.
        wtol = {"atol": tol["atol"] * 10, "rtol": tol["rtol"]}
        torch.testing.assert_close(module.weight.grad, w_ref.grad, **wtol)
        torch.testing.assert_close(module.bias.grad, b_ref.grad, **wtol)
    else:
        assert module.weight is None and module.bias is None


def test_gradient_of_only_some_inputs():
    """Input without grad (frozen features), and parameters frozen: both backward paths work."""
    gen = torch.Generator().manual_seed(1)
    module = GhostBatchNorm2d(3, 4).double()
    randomise_affine(module, gen)
    x = torch.randn(10, 3, 2, 2, generator=gen, dtype=torch.float64)
    module(x).square().sum().backward()
    w_ref = module.weight.detach().clone().requires_grad_()
    b_ref = module.bias.detach().clone().requires_grad_()
    reference_ghost_bn(x, 4, w_ref, b_ref).square().sum().backward()
    torch.testing.assert_close(module.weight.grad, w_ref.grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(module.bias.grad, b_ref.grad, atol=1e-10, rtol=1e-10)

    module.requires_grad_(False)
    x = x.clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    module(x).square().sum().backward()
    reference_ghost_bn(x_ref, 4, module.weight, module.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_input_neither_contiguous_nor_channels_last(implementation):
    """A strided view (channels swapped with width, every other column) is normalised like its copy."""
    gen = torch.Generator().manual_seed(2)
    module = GhostBatchNorm2d(4, 4).double()
    module._implementation = implementation
    randomise_affine(module, gen)
    leaf = torch.randn(10, 6, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    x = leaf.transpose(1, 3)[..., ::2]  # (10, 4, 5, 3)
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=CL)
    grad_out = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out = module(x)
    out.backward(grad_out)
    x_ref = x.detach().contiguous().requires_grad_()
    expected = reference_ghost_bn(x_ref, 4, module.weight.detach(), module.bias.detach())
    expected.backward(grad_out)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(leaf.grad.transpose(1, 3)[..., ::2], x_ref.grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    ("cls", "shape", "ghost"),
    [
        (GhostBatchNorm2d, (7, 3, 2, 2), 4),  # ghosts of 4 and 3
        (GhostBatchNorm1d, (5, 3), 2),  # ghosts of 2 and 3 (remainder of one joined)
        (GhostBatchNorm3d, (4, 2, 2, 1, 2), 8),  # one ghost smaller than g
    ],
)
def test_gradcheck(cls, shape, ghost):
    gen = torch.Generator().manual_seed(3)
    module = cls(shape[1], ghost).double()
    randomise_affine(module, gen)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    w = module.weight.detach().clone().requires_grad_()
    b = module.bias.detach().clone().requires_grad_()

    def fn(x, w, b):
        return torch.func.functional_call(module, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Eval mode and running statistics
# ---------------------------------------------------------------------------------------------


def test_eval_equals_batch_norm_with_same_state():
    gen = torch.Generator().manual_seed(4)
    ghost = GhostBatchNorm2d(4, 4, momentum=0.3)
    randomise_affine(ghost, gen)
    for batch in (8, 11, 6):
        ghost(torch.randn(batch, 4, 3, 3, generator=gen) * 3 + 1)
    assert int(ghost.num_batches_tracked) == 3

    plain = nn.BatchNorm2d(4, momentum=0.3)
    plain.load_state_dict(ghost.state_dict())
    ghost.eval()
    plain.eval()
    x = torch.randn(5, 4, 3, 3, generator=gen)
    torch.testing.assert_close(ghost(x), plain(x), atol=0, rtol=0)
    # eval with a batch of 1 works
    torch.testing.assert_close(ghost(x[:1]), plain(x[:1]), atol=0, rtol=0)
    # eval does not touch the running statistics
    assert int(ghost.num_batches_tracked) == 3


def test_train_output_depends_on_ghost_size_but_eval_does_not():
    gen = torch.Generator().manual_seed(5)
    module = GhostBatchNorm2d(3, 4)
    x = torch.randn(16, 3, 4, 4, generator=gen) + torch.arange(16.0).view(16, 1, 1, 1) / 4
    module(x)  # non-trivial running statistics

    outputs = {}
    for g in (2, 4, 8, 16):
        module.ghost_batch_size = g
        with torch.no_grad():
            outputs[g] = module(x)
        torch.testing.assert_close(outputs[g], reference_ghost_bn(x, g, module.weight, module.bias))
    for g in (2, 4, 8):
        assert not torch.allclose(outputs[g], outputs[16], atol=1e-3)
    assert not torch.allclose(outputs[2], outputs[4], atol=1e-3)

    module.eval()
    evals = []
    for g in (2, 4, 8, 16):
        module.ghost_batch_size = g
        evals.append(module(x))
    for out in evals[1:]:
        assert torch.equal(out, evals[0])


@pytest.mark.parametrize(
    ("cls", "shape", "ghost"),
    [
        (GhostBatchNorm2d, (11, 3, 2, 3), 4),  # ghosts 4, 4, 3: remainder ghost with its own n
        (GhostBatchNorm2d, (9, 3, 2, 2), 4),  # ghosts 4, 5: remainder of one joined
        (GhostBatchNorm1d, (10, 4), 4),  # ghosts 4, 4, 2: n = 2 for the last ghost
        (GhostBatchNorm3d, (6, 2, 2, 2, 3), 8),  # one ghost, smaller than g
    ],
)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_running_stats_one_forward_momentum(cls, shape, ghost, implementation):
    gen = torch.Generator().manual_seed(6)
    momentum = 0.1
    module = cls(shape[1], ghost, momentum=momentum).double()
    module._implementation = implementation
    with torch.no_grad():
        module.running_mean.copy_(torch.randn(shape[1], generator=gen, dtype=torch.float64))
        module.running_var.copy_(torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5)
    mean0, var0 = module.running_mean.clone(), module.running_var.clone()
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2
    # make ghosts different from one another so a weighted/unweighted mix-up shows
    x = x + torch.arange(shape[0], dtype=torch.float64).view(-1, *[1] * (len(shape) - 1))

    module(x)

    ghost_mean, ghost_var = hand_stats(x, ghost)
    torch.testing.assert_close(module.running_mean, (1 - momentum) * mean0 + momentum * ghost_mean)
    torch.testing.assert_close(module.running_var, (1 - momentum) * var0 + momentum * ghost_var)
    assert int(module.num_batches_tracked) == 1


def test_running_stats_remainder_uses_its_own_n():
    """Direct check: for ghosts [4, 2] of (N, C) input the variance of the pair uses n - 1 = 1."""
    module = GhostBatchNorm1d(1, 4, momentum=1.0)
    x = torch.tensor([[0.0], [2.0], [4.0], [6.0], [10.0], [14.0]])
    module(x)
    # ghost 1: mean 3, unbiased var 20/3; ghost 2: mean 12, unbiased var 8
    assert module.running_mean.item() == pytest.approx((3 + 12) / 2)
    assert module.running_var.item() == pytest.approx((20 / 3 + 8) / 2)


def test_running_stats_cumulative_average_with_momentum_none():
    gen = torch.Generator().manual_seed(7)
    ghost = 4
    module = GhostBatchNorm2d(3, ghost, momentum=None).double()
    stats = []
    for batch in (11, 9, 8):  # uneven, remainder of one, even
        x = torch.randn(batch, 3, 2, 3, generator=gen, dtype=torch.float64) * (batch / 4) + batch
        module(x)
        stats.append(hand_stats(x, ghost))
    assert int(module.num_batches_tracked) == 3
    torch.testing.assert_close(module.running_mean, torch.stack([m for m, _ in stats]).mean(0))
    torch.testing.assert_close(module.running_var, torch.stack([v for _, v in stats]).mean(0))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_single_ghost_running_stats_equal_batch_norm(momentum):
    """With g >= batch there is one ghost: everything, running statistics included, is BatchNorm."""
    gen = torch.Generator().manual_seed(8)
    plain = nn.BatchNorm2d(3, momentum=momentum).double()
    ghost = GhostBatchNorm2d(3, 64, momentum=momentum).double()
    ghost.load_state_dict(plain.state_dict())
    for batch in (16, 7, 30):
        x = torch.randn(batch, 3, 3, 3, generator=gen, dtype=torch.float64) * 2 + 1
        torch.testing.assert_close(ghost(x), plain(x), atol=1e-10, rtol=1e-10)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(ghost.state_dict()[key], value, atol=1e-12, rtol=1e-12)


def test_track_running_stats_false_uses_ghost_stats_in_eval_too():
    gen = torch.Generator().manual_seed(9)
    module = GhostBatchNorm2d(3, 4, track_running_stats=False)
    assert module.running_mean is None and module.running_var is None
    assert list(module.state_dict()) == list(nn.BatchNorm2d(3, track_running_stats=False).state_dict())
    x = torch.randn(10, 3, 2, 2, generator=gen)
    torch.testing.assert_close(module(x), reference_ghost_bn(x, 4, module.weight, module.bias))
    module.eval()  # like BatchNorm: no running statistics -> batch (here: ghost) statistics
    torch.testing.assert_close(module(x), reference_ghost_bn(x, 4, module.weight, module.bias))


# ---------------------------------------------------------------------------------------------
# state_dict compatibility
# ---------------------------------------------------------------------------------------------


def small_bn_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.BatchNorm1d(6, momentum=None),
        nn.Linear(6, 2),
    )


def assert_state_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_state_dict_round_trip_between_batch_norm_and_ghost():
    torch.manual_seed(10)
    plain = small_bn_model()
    for _ in range(3):
        plain(torch.randn(8, 3, 6, 6) * 2 + 1)
    plain_state = copy.deepcopy(plain.state_dict())

    ghost = convert_to_ghost_bn(small_bn_model(), 4)
    assert isinstance(ghost[1], GhostBatchNorm2d) and isinstance(ghost[5], GhostBatchNorm1d)
    assert list(ghost.state_dict()) == list(plain_state)
    ghost.load_state_dict(plain_state, strict=True)
    assert_state_equal(ghost.state_dict(), plain_state)

    for _ in range(2):
        ghost(torch.randn(10, 3, 6, 6) * 3)
    ghost_state = copy.deepcopy(ghost.state_dict())
    assert int(ghost_state["1.num_batches_tracked"]) == 5

    back = small_bn_model()
    back.load_state_dict(ghost_state, strict=True)
    assert_state_equal(back.state_dict(), ghost_state)
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(back.eval()(x), ghost.eval()(x), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# convert_to_ghost_bn
# ---------------------------------------------------------------------------------------------


def test_convert_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(11)
    model = torchvision.models.resnet18(num_classes=10)
    assert not has_ghost_bn(model)
    bn_names = {name for name, m in model.named_modules() if type(m) is nn.BatchNorm2d}
    assert len(bn_names) == 20
    param_ids = {name: id(p) for name, p in model.named_parameters()}
    buffer_ids = {name: id(b) for name, b in model.named_buffers()}
    keys = list(model.state_dict())
    state_before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # built BEFORE conversion

    assert convert_to_ghost_bn(model, 4) is model
    assert has_ghost_bn(model)
    ghost_names = {name for name, m in model.named_modules() if isinstance(m, GhostBatchNorm2d)}
    assert ghost_names == bn_names
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert all(m.ghost_batch_size == 4 for m in model.modules() if isinstance(m, GhostBatchNorm2d))
    assert {name: id(p) for name, p in model.named_parameters()} == param_ids
    assert {name: id(b) for name, b in model.named_buffers()} == buffer_ids
    assert list(model.state_dict()) == keys
    assert_state_equal(model.state_dict(), state_before)

    # train forward/backward with ghosts of 4 on a batch of 8; every parameter gets a gradient
    x = torch.randn(8, 3, 32, 32)
    target = torch.randint(0, 10, (8,))
    model.train()
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert int(model.bn1.num_batches_tracked) == 1
    # the optimizer built before conversion updates the converted model's parameters
    before = model.fc.weight.detach().clone()
    bn_weight_before = model.layer1[0].bn1.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model.fc.weight, before)
    assert not torch.equal(model.layer1[0].bn1.weight, bn_weight_before)

    model.eval()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (8, 10)
        assert model(x[:1]).shape == (1, 10)  # eval with a batch of one
    assert int(model.bn1.num_batches_tracked) == 1

    # idempotent: converting again only changes the ghost size, nothing is nested or replaced
    modules_before = {name: m for name, m in model.named_modules()}
    assert convert_to_ghost_bn(model, 2) is model
    modules_after = dict(model.named_modules())
    assert list(modules_after) == list(modules_before)
    assert all(modules_after[n] is modules_before[n] for n in modules_after)
    for name in ghost_names:
        m = modules_after[name]
        assert type(m) is GhostBatchNorm2d and m.ghost_batch_size == 2
        assert list(m.children()) == []
    assert not model.training  # the training flag is untouched
    assert {name: id(p) for name, p in model.named_parameters()} == param_ids
    assert list(model.state_dict()) == keys


def test_convert_keeps_hyperparameters_and_training_flag():
    model = nn.Sequential(
        nn.BatchNorm1d(3, eps=1e-3, momentum=None),
        nn.Sequential(nn.BatchNorm3d(2, affine=False, track_running_stats=False)),
    ).eval()
    convert_to_ghost_bn(model, 6)
    first, nested = model[0], model[1][0]
    assert type(first) is GhostBatchNorm1d and type(nested) is GhostBatchNorm3d
    assert first.eps == 1e-3 and first.momentum is None and first.affine and first.track_running_stats
    assert not nested.affine and not nested.track_running_stats and nested.running_mean is None
    assert not first.training and not nested.training
    assert "ghost_batch_size=6" in repr(first)


def test_convert_leaves_other_batch_norm_subclasses_alone():
    """Only exact BatchNorm1d/2d/3d are swapped (e.g. SyncBatchNorm stays what it is)."""
    model = nn.Sequential(nn.SyncBatchNorm(3), nn.BatchNorm2d(3))
    convert_to_ghost_bn(model, 4)
    assert type(model[0]) is nn.SyncBatchNorm
    assert type(model[1]) is GhostBatchNorm2d


def test_convert_bare_modules():
    """convert_to_ghost_bn swaps children in place, so a bare BatchNorm passed directly is NOT
    converted: it is returned unchanged. A bare Ghost module gets the new ghost size."""
    bn = nn.BatchNorm2d(3)
    result = convert_to_ghost_bn(bn, 4)
    assert result is bn
    assert type(result) is nn.BatchNorm2d
    assert not has_ghost_bn(result)

    ghost = GhostBatchNorm2d(3, 4)
    assert convert_to_ghost_bn(ghost, 8) is ghost
    assert ghost.ghost_batch_size == 8


def test_convert_with_ghost_size_below_two_raises():
    with pytest.raises(GhostBatchError):
        convert_to_ghost_bn(nn.Sequential(nn.BatchNorm2d(3)), 1)
    with pytest.raises(GhostBatchError):
        convert_to_ghost_bn(nn.Sequential(nn.BatchNorm2d(3)), 0)


def test_reconvert_with_ghost_size_below_two_raises():
    model = convert_to_ghost_bn(nn.Sequential(nn.BatchNorm1d(3)), 4)
    with pytest.raises(GhostBatchError):
        convert_to_ghost_bn(model, 1)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "shape"),
    [(GhostBatchNorm1d, (1, 3)), (GhostBatchNorm2d, (1, 3, 4, 4)), (GhostBatchNorm3d, (1, 3, 2, 2, 2))],
)
def test_training_batch_of_one_raises(cls, shape):
    module = cls(3, 4)
    with pytest.raises(GhostBatchError, match="1 sample"):
        module(torch.randn(shape))
    with pytest.raises(ValueError):
        module(torch.randn(shape))
    assert issubclass(GhostBatchError, ValueError)
    assert int(module.num_batches_tracked) == 0
    assert torch.equal(module.running_mean, torch.zeros(3))

    module.eval()
    x = torch.randn(shape)
    expected = F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0, 1e-5)
    torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("ghost", [1, 0, -4])
def test_ghost_size_below_two_raises(ghost):
    with pytest.raises(GhostBatchError, match="at least 2"):
        GhostBatchNorm2d(3, ghost)


def test_wrong_input_dim_raises_like_batch_norm():
    with pytest.raises(ValueError, match="expected 4D input"):
        GhostBatchNorm2d(3, 4)(torch.randn(8, 3, 5))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        GhostBatchNorm1d(3, 4)(torch.randn(8, 3, 5, 5))


# ---------------------------------------------------------------------------------------------
# Precision: bf16 autocast, and inputs far from zero mean
# ---------------------------------------------------------------------------------------------


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bf16_autocast_conv_ghost_bn(implementation):
    torch.manual_seed(12)
    conv = nn.Conv2d(3, 8, 3)
    ghost = GhostBatchNorm2d(8, 4)
    ghost._implementation = implementation
    randomise_affine(ghost, torch.Generator().manual_seed(12))
    plain = nn.BatchNorm2d(8)
    plain.load_state_dict(ghost.state_dict())
    x = torch.randn(16, 3, 12, 12)
    grad_out = torch.randn(16, 8, 10, 10)

    # What BatchNorm2d gives in this setting: conv output is bf16, BN keeps the input dtype.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_out = plain(conv(x))
    assert plain_out.dtype == torch.bfloat16

    def run(module, autocast: bool):
        conv_c, module_c = copy.deepcopy(conv), copy.deepcopy(module)
        x_c = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module_c(conv_c(x_c))
        out.backward(grad_out.to(out.dtype))
        grads = [x_c.grad, conv_c.weight.grad, module_c.weight.grad, module_c.bias.grad]
        return out, grads, module_c

    out_bf16, grads_bf16, ghost_bf16 = run(ghost, autocast=True)
    out_f32, grads_f32, ghost_f32 = run(ghost, autocast=False)
    assert out_bf16.dtype == plain_out.dtype == torch.bfloat16
    assert out_f32.dtype == torch.float32
    # parameters, their gradients and the running statistics stay float32, close to the float32 run's
    for key, value in ghost_bf16.state_dict().items():
        if key != "num_batches_tracked":
            assert value.dtype == torch.float32, key
            torch.testing.assert_close(value, ghost_f32.state_dict()[key], atol=2e-3, rtol=1e-2, msg=key)
    assert ghost_bf16.weight.grad.dtype == ghost_bf16.bias.grad.dtype == torch.float32
    assert rel_err(out_bf16, out_f32) < 2e-2
    for got, want in zip(grads_bf16, grads_f32, strict=True):
        assert got is not None and torch.isfinite(got).all()
        assert rel_err(got, want) < 3e-2
    # and it is about as close as BatchNorm2d itself gets under autocast
    assert rel_err(out_bf16, out_f32) < 3 * rel_err(plain_out, plain(conv(x)).detach()) + 5e-3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("shape", "offset", "scale", "ghost", "memory_format"),
    [
        ((16, 4, 8, 8), 1000.0, 1.0, 16, None),
        ((16, 4, 8, 8), 1000.0, 1.0, 16, CL),
        ((16, 4, 8, 8), 10.0, 1.0, 16, None),
        ((64, 3), 5.0, 0.01, 64, None),
        ((6, 1), 3.0, 0.01, 4, None),
    ],
    ids=["2d-mean1000-std1", "2d-channels_last-mean1000-std1", "2d-mean10-std1", "1d-mean5-std0.01", "1d-two-sample"],
)
def test_float32_accuracy_with_large_mean(shape, offset, scale, ghost, memory_format, implementation):
    """As precise as per-chunk BatchNorm in float32 where a channel's mean is ~1000x its spread
    (a one-pass E[x^2] - E[x]^2 variance cancels there): output and gradients."""
    gen = torch.Generator().manual_seed(13)
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64)
    x64.requires_grad_()
    truth = reference_ghost_bn(x64, ghost, eps=1e-4)
    truth.backward(grad_out)
    x = x64.detach().float()
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    plain_err = (reference_ghost_bn(x, ghost, eps=1e-4).double() - truth).abs().max().item()
    if memory_format is None:
        assert plain_err < 1e-4  # per-chunk BatchNorm in float32 is fine here (~2e-4 with its channels_last kernel)
    limit = max(1e-4, 1.5 * plain_err)
    cls = GhostBatchNorm2d if len(shape) == 4 else GhostBatchNorm1d
    module = cls(shape[1], ghost, eps=1e-4)
    module._implementation = implementation
    x.requires_grad_()
    out = module(x)
    out.backward(grad_out.float())
    assert (out.double() - truth).abs().max().item() < limit
    # gradients: relative to their size (x.grad ~ 1/spread), as close as float32 BatchNorm per chunk gets
    x_ref = x.detach().clone().requires_grad_()
    reference_ghost_bn(x_ref, ghost, eps=1e-4).backward(grad_out.float())
    plain_grad_err = rel_err(x_ref.grad, x64.grad)
    assert rel_err(x.grad, x64.grad) < max(10 * plain_grad_err, 1e-5)
    # the running variance too (unbiased, per ghost, averaged): relative error of float32 rounding
    _, ghost_var = hand_stats(x64.detach(), ghost)
    expected_var = 0.9 + 0.1 * ghost_var
    torch.testing.assert_close(module.running_var.double(), expected_var, rtol=1e-4, atol=1e-7)


def test_float32_input_under_autocast_keeps_float32_statistics():
    """Autocast must not push the statistics of a float32 input through bf16 (e.g. via bmm/einsum):
    off-centre data would then lose its variance entirely (an error of ~5 here)."""
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(16, 8, 4, 4, generator=gen) + 20
    plain, ghost = nn.BatchNorm2d(8), GhostBatchNorm2d(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, out = plain(x), ghost(x)
    assert out.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=1e-3)


def test_bf16_input_precision_with_offset():
    gen = torch.Generator().manual_seed(15)
    x = (torch.randn(16, 8, 4, 4, generator=gen) + 20).bfloat16()
    grad_out = torch.randn(16, 8, 4, 4, generator=gen).bfloat16()
    module = GhostBatchNorm2d(8, 16)
    xr = x.float().requires_grad_()
    w = module.weight.detach().clone().requires_grad_()
    b = module.bias.detach().clone().requires_grad_()
    truth = F.batch_norm(xr, None, None, w, b, training=True)
    truth.backward(grad_out.float())

    plain = nn.BatchNorm2d(8)
    plain_out = plain(x)
    plain_out.backward(grad_out)
    out = module(x)
    out.backward(grad_out)
    # BatchNorm2d with the same bf16 input: ~0.008 and ~4e-6 here (weight grad ~24 in magnitude)
    assert (plain_out.float() - truth).abs().max().item() < 0.02
    assert (plain.weight.grad - w.grad).abs().max().item() < 1e-2
    out_err = (out.float() - truth).abs().max().item()
    weight_grad_err = (module.weight.grad - w.grad).abs().max().item()
    assert out_err < 0.03 and weight_grad_err < 0.1, (out_err, weight_grad_err)


# ---------------------------------------------------------------------------------------------
# torch.compile (slowest test here: ~15 s cold on CPU for the inductor compile, ~3 s with a warm cache)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_has_no_graph_breaks():
    """Training forward of a conv + Ghost BN under dynamo: one graph (running-statistics update included)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), GhostBatchNorm2d(4, 4, momentum=None), nn.ReLU())
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(10, 3, 6, 6))  # ghosts 4, 4, 2
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(16)
    eager = nn.Sequential(nn.Conv2d(3, 4, 3), GhostBatchNorm2d(4, 4), nn.ReLU())
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    x = torch.randn(10, 3, 6, 6)  # ghosts 4, 4, 2
    grad_out = torch.randn(10, 4, 4, 4)

    x_e = x.clone().requires_grad_()
    out_e = eager(x_e)
    out_e.backward(grad_out)
    x_c = x.clone().requires_grad_()
    out_c = compiled(x_c)
    out_c.backward(grad_out)

    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_c.grad, x_e.grad, atol=1e-5, rtol=1e-5)
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(p_c.grad, p_e.grad, atol=1e-5, rtol=1e-4, msg=name)
    for (name, b_e), b_c in zip(eager.named_buffers(), compiled_model.buffers(), strict=True):
        torch.testing.assert_close(b_c, b_e, atol=1e-6, rtol=1e-5, msg=name)
