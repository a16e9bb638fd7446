"""Every reference model keeps vpipe's model-file contract, traces with fx, and can learn."""

import dataclasses
import importlib
import re
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx

NAMES = ["gpt", "bert", "resnet", "vgg", "mlp"]
B = 4  # batch size used throughout

# name -> config -> (input shape, input dtype, target shape, output shape), as the docs promise.
Shapes = tuple[tuple[int, ...], torch.dtype, tuple[int, ...], tuple[int, ...]]
SHAPES: dict[str, Callable[..., Shapes]] = {
    "gpt": lambda c: ((B, c.seq_len), torch.int64, (B, c.seq_len), (B, c.seq_len, c.vocab_size)),
    "bert": lambda c: ((B, c.seq_len), torch.int64, (B,), (B, c.num_classes)),
    "resnet": lambda c: (
        (B, c.in_channels, c.image_size, c.image_size),
        torch.float32,
        (B,),
        (B, c.num_classes),
    ),
    "vgg": lambda c: (
        (B, c.in_channels, c.image_size, c.image_size),
        torch.float32,
        (B,),
        (B, c.num_classes),
    ),
    "mlp": lambda c: ((B, c.in_features), torch.float32, (B,), (B, c.num_classes)),
}


def load(name: str) -> ModuleType:
    return importlib.import_module(f"vpipe.models.{name}")


def as_args(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def loss_of(module: ModuleType, output: Tensor, target: Tensor) -> Tensor:
    """The model's own loss_fn, or vpipe's default: cross-entropy over the last dimension."""
    if hasattr(module, "loss_fn"):
        return module.loss_fn(output, target)
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


@pytest.mark.parametrize("name", NAMES)
def test_make_batch_is_deterministic_per_step_and_leaves_global_rng_alone(name: str) -> None:
    m = load(name)
    rng = torch.get_rng_state()
    (x1, y1), (x2, y2), (x3, y3) = (m.make_batch(B, s) for s in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_ranges_are_as_documented(name: str) -> None:
    m = load(name)
    in_shape, in_dtype, target_shape, out_shape = SHAPES[name](m.CONFIG)
    inputs, target = m.make_batch(B, 0)
    (x,) = as_args(inputs)
    assert (tuple(x.shape), x.dtype) == (in_shape, in_dtype)
    assert (tuple(target.shape), target.dtype) == (target_shape, torch.int64)
    assert tuple(m.build_model()(x).shape) == out_shape
    classes = m.CONFIG.vocab_size if name == "gpt" else m.CONFIG.num_classes
    assert 0 <= int(target.min()) and int(target.max()) < classes
    if in_dtype == torch.int64:
        assert 0 <= int(x.min()) and int(x.max()) < m.CONFIG.vocab_size


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_matches_eager(name: str) -> None:
    m = load(name)
    torch.manual_seed(0)
    model = m.build_model().eval()
    args = as_args(m.make_batch(B, 0)[0])
    traced = fx.symbolic_trace(model)
    torch.testing.assert_close(traced(*args), model(*args), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_one_sgd_step_lowers_the_loss_on_a_repeated_batch(name: str) -> None:
    m = load(name)
    torch.manual_seed(0)
    model = m.build_model().train()
    inputs, target = m.make_batch(8, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = loss_of(m, model(*as_args(inputs)), target)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_of(m, model(*as_args(inputs)), target)
    assert after.item() < before.item()


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_has_exactly_one_owner(name: str) -> None:
    # A tensor shared between two modules would be duplicated by a naive stage split.
    model = load(name).build_model()
    named = list(model.named_parameters(remove_duplicate=False))
    assert len({id(p) for _, p in named}) == len(named)


def test_gpt_is_causal() -> None:
    gpt = load("gpt")
    torch.manual_seed(0)
    model = gpt.build_model().eval()
    x, _ = gpt.make_batch(2, 0)
    changed = x.clone()
    changed[:, 40:] = (changed[:, 40:] + 1) % gpt.CONFIG.vocab_size
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :40], b[:, :40])
    assert not torch.allclose(a[:, 40:], b[:, 40:])


def test_twelve_layer_gpt_traces_to_a_few_hundred_nodes() -> None:
    gpt = load("gpt")
    config = gpt.GPTConfig(n_layers=12, d_model=256, seq_len=128, n_heads=8)
    nodes = len(fx.symbolic_trace(gpt.build_model(config)).graph.nodes)
    assert nodes < 400, nodes


@pytest.mark.parametrize(
    ("name", "config", "words"),
    [
        ("gpt", "GPTConfig", {"d_model": 65, "n_heads": 4}),
        ("bert", "BERTConfig", {"d_model": 30, "n_heads": 4}),
        ("resnet", "ResNetConfig", {"widths": (8, 16), "blocks_per_stage": (1,)}),
        ("vgg", "VGGConfig", {"image_size": 20}),
    ],
)
def test_bad_config_raises_value_error_naming_the_values(
    name: str, config: str, words: dict[str, object]
) -> None:
    cls = getattr(load(name), config)
    with pytest.raises(ValueError, match=re.escape(str(next(iter(words.values()))))):
        cls(**words)


def test_configs_are_frozen() -> None:
    gpt = load("gpt")
    with pytest.raises(dataclasses.FrozenInstanceError):
        gpt.CONFIG.n_layers = 99  # type: ignore[misc]
