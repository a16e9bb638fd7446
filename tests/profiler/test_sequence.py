"""Timed in sequence, each node gets its own forward, backward and update: a node that spins a
known CPU time in each (a custom autograd function; an optimizer step that spins per tensor) is
charged that time and its neighbours are not, and the parts add up to the whole pass."""

import gc
import time
import weakref

import pytest
import torch
from torch import fx, nn

from vpipe.common.optim import Updater
from vpipe.profiler import sequence
from vpipe.profiler.sequence import time_in_sequence

FORWARD_S, BACKWARD_S = 0.004, 0.010  # the spinning node's known cost


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


class _Spin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        _spin(FORWARD_S)
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        _spin(BACKWARD_S)
        return grad


class Spinner(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Spin.apply(x)


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.before = nn.Linear(16, 16)
        self.spin = Spinner()
        self.after = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(torch.relu(self.spin(self.before(x))))


class _Leaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, Spinner) or super().is_leaf_module(m, name)


def test_a_spinning_node_is_charged_its_own_time():
    model = Chain()
    gm = fx.GraphModule(model, _Leaves().trace(model))
    times = time_in_sequence(
        gm, (torch.randn(4, 16),), time.process_time, warmup=1, repeats=3
    ).nodes
    assert set(times) == {"before", "spin", "relu", "after"}
    spin = times["spin"]
    assert FORWARD_S * 1e3 <= spin.forward_ms < FORWARD_S * 1e3 * 1.5, spin
    assert BACKWARD_S * 1e3 <= spin.backward_ms < BACKWARD_S * 1e3 * 1.5, spin
    for name in ("before", "relu", "after"):  # microseconds of work each
        assert times[name].forward_ms < 1.0 and times[name].backward_ms < 1.0, (name, times[name])


USUAL_S, SPELL_S, EVERY = 0.002, 0.014, 4  # a node slowed 7x in every 4th call


class _SlowSpells(nn.Module):
    """Spins USUAL_S in its forward, SPELL_S in every EVERY-th call: a machine that slows
    down in spells, with the spells in a known share of the passes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _spin(SPELL_S if self.calls % EVERY == 0 else USUAL_S)
        self.calls += 1
        return x * 1.0


class _SpellChain(Chain):
    def __init__(self) -> None:
        super().__init__()
        self.spin = _SlowSpells()


class _SpellLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, _SlowSpells) or super().is_leaf_module(m, name)


def test_a_node_is_charged_its_mean_over_the_passes_spells_included():
    """4 timed passes after one warm-up, the last in a spell: the node's forward is their mean,
    (3 x 2 + 14) / 4 = 5 ms, as a running stage's throughput pays it; a median would say 2."""
    model = _SpellChain()
    gm = fx.GraphModule(model, _SpellLeaves().trace(model))
    times = time_in_sequence(gm, (torch.randn(4, 16),), time.process_time, 1, 4).nodes
    assert model.spin.calls == 1 + 4
    mean_ms = ((EVERY - 1) * USUAL_S + SPELL_S) / EVERY * 1e3
    assert mean_ms <= times["spin"].forward_ms < mean_ms * 1.2, times["spin"]


LOSS_FORWARD_S, LOSS_BACKWARD_S, BATCH_S = 0.003, 0.006, 0.002  # a spinning step's known cost


class _SpinningLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        _spin(LOSS_FORWARD_S)
        return x.sum()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        _spin(LOSS_BACKWARD_S)
        return grad * torch.ones(4, 16)


def test_a_step_charges_the_batch_and_the_loss_their_own_time():
    """With a step, each pass makes a micro-batch of its own step (a new one each pass, as a
    stage does) and runs the backward from its loss: the making and the loss are charged what
    they spin, and the spinning node is still charged its own."""
    steps: list[int] = []

    def batch(step: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        steps.append(step)
        _spin(BATCH_S)
        return (torch.randn(4, 16),), torch.zeros(4)

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _SpinningLoss.apply(output) + target.sum()

    model = Chain()
    gm = fx.GraphModule(model, _Leaves().trace(model))
    step = sequence.Step(batch, loss)
    times = time_in_sequence(gm, (torch.randn(4, 16),), time.process_time, 1, 3, step=step)
    assert steps == list(range(len(steps))) and len(steps) >= 1 + 3
    assert times.loss is not None and times.batch_ms is not None
    assert LOSS_FORWARD_S * 1e3 <= times.loss.forward_ms < LOSS_FORWARD_S * 1e3 * 1.5
    assert LOSS_BACKWARD_S * 1e3 <= times.loss.backward_ms < LOSS_BACKWARD_S * 1e3 * 1.5
    assert BATCH_S * 1e3 <= times.batch_ms < BATCH_S * 1e3 * 1.5
    spin = times.nodes["spin"]
    assert FORWARD_S * 1e3 <= spin.forward_ms < FORWARD_S * 1e3 * 1.5, spin
    assert BACKWARD_S * 1e3 <= spin.backward_ms < BACKWARD_S * 1e3 * 1.5, spin
    assert set(times.nodes) == {"before", "spin", "relu", "after"}


def test_without_a_step_the_loss_and_batch_are_not_timed():
    model = Chain()
    gm = fx.GraphModule(model, _Leaves().trace(model))
    times = time_in_sequence(gm, (torch.randn(4, 16),), time.process_time, 1, 3)
    assert times.loss is None and times.batch_ms is None


def _counting_passes(monkeypatch) -> list[float]:
    """Record each timed or untimed pass's process CPU seconds."""
    passes: list[float] = []
    one_pass = sequence._one_pass

    def counted(*args):
        start = time.process_time()
        value = one_pass(*args)
        passes.append(time.process_time() - start)
        return value

    monkeypatch.setattr(sequence, "_one_pass", counted)
    return passes


def test_a_small_model_is_timed_over_the_least_total_time(monkeypatch):
    """A pass of microseconds is timed many more times than `repeats`: a median over 5 of them
    moves with one preemption."""
    passes = _counting_passes(monkeypatch)
    model = nn.Linear(8, 8)
    gm = fx.symbolic_trace(model)
    least = 0.05
    time_in_sequence(gm, (torch.randn(2, 8),), time.process_time, 1, 3, min_time_s=least)
    timed = passes[1:]
    assert len(timed) > 3
    assert sum(timed) >= least * 0.9 or len(timed) == sequence.MAX_PASSES


def test_a_slow_model_is_timed_repeats_times(monkeypatch):
    passes = _counting_passes(monkeypatch)
    least = (FORWARD_S + BACKWARD_S) / 2  # one pass takes more
    model = Chain()
    gm = fx.GraphModule(model, _Leaves().trace(model))
    time_in_sequence(gm, (torch.randn(4, 16),), time.process_time, 1, 3, min_time_s=least)
    assert len(passes) == 1 + 3


class _Remembering(nn.Module):
    """Passes its input on, keeping a weak reference to each output it makes (a leaf, so the
    graph calls it)."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[weakref.ref[torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1.0
        self.outputs.append(weakref.ref(y))
        return y


class _KeepsRemembering(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, _Remembering) or super().is_leaf_module(m, name)


def test_a_pass_frees_its_output_as_it_ends():
    """A pass's output goes when the pass ends. A hook holding the interpreter, which holds the
    output, which holds its graph and so the hook, made a cycle through autograd's nodes that
    Python's collector cannot see: every pass's output leaked, and each next pass's backward
    faulted in fresh pages (widehead: 4 MiB a pass; its last node charged 1.7 ms against 0.1 ms
    alone)."""
    remembering = _Remembering()
    model = nn.Sequential(nn.Linear(8, 8), remembering)
    gm = fx.GraphModule(model, _KeepsRemembering().trace(model))
    sequence._one_pass(gm, sequence._Inputs((torch.randn(4, 8),)), time.process_time, {})
    gc.collect()  # not even the cycle collector could free it
    assert remembering.outputs and all(ref() is None for ref in remembering.outputs)


UPDATE_S = 0.003  # what the spinning optimizer step costs per tensor it steps


def _two_layers() -> tuple[nn.Module, fx.GraphModule, dict[str, list[torch.Tensor]]]:
    """Linear (a weight and a bias), ReLU, Linear without bias; each node's trainable tensors."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8, bias=False))
    gm = fx.symbolic_trace(model)
    trainable = {"_0": list(model[0].parameters()), "_2": list(model[2].parameters())}
    return model, gm, trainable


def _spinning_steps(monkeypatch, per_call_s: float) -> None:
    """Make each optimizer step spin `per_call_s` plus UPDATE_S per tensor it steps."""
    step = Updater.step

    def spinning(self, weights, grads, in_place):
        _spin(per_call_s + UPDATE_S * len(weights))
        return step(self, weights, grads, in_place)

    monkeypatch.setattr(Updater, "step", spinning)


@pytest.mark.parametrize("per_call_s", [0.0, 0.004])
def test_each_node_is_charged_its_own_update_without_the_calls_cost(monkeypatch, per_call_s):
    """A stage steps all its weights in one call: what a call costs whatever it steps is not
    charged to every node."""
    _spinning_steps(monkeypatch, per_call_s)
    _, gm, trainable = _two_layers()
    x = torch.randn(4, 8)
    times = time_in_sequence(gm, (x,), time.process_time, 1, 6, trainable=trainable).nodes
    for name, tensors in (("_0", 2), ("_2", 1)):
        expected = UPDATE_S * tensors * 1e3
        assert expected * 0.9 <= times[name].update_ms < expected * 1.3, (name, times[name])
    assert times["_1"].update_ms == 0.0


def test_the_update_steps_on_the_pass_gradients_into_new_tensors(monkeypatch):
    """Each update gets the gradients its pass's backward made (an independent backward of the
    same pass gives them), and, as a stashing stage's, leaves the weights as they were."""
    seen: list[dict[str, torch.Tensor]] = []
    step = Updater.step

    def recording(self, weights, grads, in_place):
        assert not in_place
        seen.append({n: g.clone() for n, g in grads.items()})
        return step(self, weights, grads, in_place)

    monkeypatch.setattr(Updater, "step", recording)
    model, gm, trainable = _two_layers()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 8)
    time_in_sequence(gm, (x,), time.process_time, 0, 2, trainable={"_0": trainable["_0"]})
    reference = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8, bias=False))
    reference.load_state_dict(model.state_dict())
    out = reference(x)
    out.backward(torch.ones_like(out))
    expected = {"0": reference[0].weight.grad, "1": reference[0].bias.grad}
    assert len(seen) == 2 * 2  # each pass first steps one element, for the first call's cost
    assert all([g.numel() for g in grads.values()] == [1] for grads in seen[::2])
    for grads in seen[1::2]:
        assert set(grads) == set(expected)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected[name])
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


FIRST_S = 0.006  # what the first update call after a backward costs, whatever it steps


def test_the_first_update_after_a_backward_is_every_stage_s_call_not_a_node_s(monkeypatch):
    """The first update call after each backward spins FIRST_S more (as a check and a step
    after ResNet's backward pay about 0.2 ms): the profile's `update_call_ms` takes it, and no
    node's update does, since every stage pays it whichever node it updates first."""
    fresh = [False]
    backward = torch.autograd.backward

    def marking(*args, **kwargs):
        backward(*args, **kwargs)
        fresh[0] = True

    update = sequence._Update.__call__

    def first_pays(self):
        if fresh[0]:
            _spin(FIRST_S)
            fresh[0] = False
        update(self)

    monkeypatch.setattr(torch.autograd, "backward", marking)
    monkeypatch.setattr(sequence._Update, "__call__", first_pays)
    _, gm, trainable = _two_layers()
    times = time_in_sequence(gm, (torch.randn(4, 8),), time.process_time, 1, 3, trainable=trainable)
    assert FIRST_S * 1e3 <= times.update_call_ms < FIRST_S * 1e3 * 1.5
    for name in ("_0", "_2"):
        assert times.nodes[name].update_ms < FIRST_S * 1e3 / 4, (name, times.nodes[name])


def test_each_node_is_charged_adding_its_own_gradients_into_the_sum(monkeypatch):
    """The accumulation 1f1b and gpipe stages do after each backward: a node's share is the
    adds of its own gradients, one per tensor (each made to spin a known time here)."""
    accumulate = sequence._Accumulate.__call__

    def spinning(self):
        _spin(UPDATE_S * sum(p.grad is not None for p in self.params))
        accumulate(self)

    monkeypatch.setattr(sequence._Accumulate, "__call__", spinning)
    _, gm, trainable = _two_layers()
    times = time_in_sequence(
        gm, (torch.randn(4, 8),), time.process_time, 1, 3, trainable=trainable
    ).nodes
    for name, tensors in (("_0", 2), ("_2", 1)):
        expected = UPDATE_S * tensors * 1e3
        assert expected <= times[name].accumulate_ms < expected * 1.3, (name, times[name])
    assert times["_1"].accumulate_ms == 0.0


def test_the_running_sum_holds_every_pass_gradients():
    model, gm, trainable = _two_layers()
    x = torch.randn(4, 8)
    add = sequence._Accumulate.of(tuple(trainable["_2"]))
    for _ in range(3):
        sequence._one_pass(gm, sequence._Inputs((x,)), time.process_time, {"_2": add})
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(add.totals[0], 3 * model[2].weight.grad)
