"""Byte figures of a hand-built model, worked out by hand (float32: 4 bytes an element)."""

import pytest
import torch

from vpipe.common.capture import capture
from vpipe.common.modelfile import Batch, load_model_file
from vpipe.profiler.measure import backward_peaks
from vpipe.profiler.profiling import ProfileSettings, profile_model

BATCH = 2


@pytest.fixture(scope="module")
def profile(request):
    fixtures = request.config.rootpath / "tests" / "profiler" / "fixtures"
    settings = ProfileSettings(
        batch_size=BATCH, device="cpu", optimizer="adam", repeats=1, warmup=0, min_time_s=0.0
    )
    return profile_model(load_model_file(str(fixtures / "handbuilt.py")), settings)


def by_target(profile, target):
    (node,) = [n for n in profile.nodes if n.target == target]
    return node


def test_parameter_gradient_and_buffer_bytes(profile):
    conv = by_target(profile, "Conv2d")
    assert conv.param_bytes == (4 * 3 * 3 * 3 + 4) * 4 == 448
    assert conv.grad_bytes == 448
    assert conv.parameters == ("0.weight", "0.bias")
    bn = by_target(profile, "BatchNorm2d")
    assert bn.param_bytes == 2 * 4 * 4  # weight and bias of 4 channels
    assert bn.buffer_bytes == 2 * 4 * 4 + 8  # running mean and var, int64 batch counter
    linear = by_target(profile, "Linear")
    assert linear.param_bytes == (64 * 5 + 5) * 4 == 1300


def test_output_bytes_and_shapes(profile):
    conv = by_target(profile, "Conv2d")
    assert conv.outputs[0].shape == (BATCH, 4, 4, 4)
    assert conv.output_bytes == BATCH * 4 * 4 * 4 * 4 == 512
    assert by_target(profile, "Linear").output_bytes == BATCH * 5 * 4


def test_saved_for_backward_bytes_by_hand(profile):
    x, conv, bn, relu, flat, linear = profile.nodes
    # conv keeps its input (to compute the weight gradient), nothing of its own
    assert (conv.saved_inputs, conv.saved_bytes) == ((x.name,), 0)
    # batch norm keeps its input plus the batch mean and inverse std: 2 x 4 channels x 4 B
    assert (bn.saved_inputs, bn.saved_bytes, bn.saves_output) == ((conv.name,), 32, False)
    # relu keeps its own output (2 x 4 x 4 x 4 x 4 B, counted as that tensor), nothing else
    assert (relu.saved_inputs, relu.saved_bytes, relu.saves_output) == ((), 0, True)
    # flatten is a view and keeps nothing; the linear keeps its (flattened) input
    assert (flat.saved_inputs, flat.saved_bytes, flat.view_of) == ((), 0, relu.name)
    assert (linear.saved_inputs, linear.saved_bytes) == ((flat.name,), 0)


def test_saved_union_matches_an_independent_whole_model_count(profile, request):
    """Counted the other way: unique non-parameter storages saved in one plain forward."""
    fixtures = request.config.rootpath / "tests" / "profiler" / "fixtures"
    model_file = load_model_file(str(fixtures / "handbuilt.py"))
    torch.manual_seed(0)
    model = model_file.build_model().train()
    (x,) = model_file.batch(BATCH, 0).args
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in state:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out

    # the profile's view: own saved bytes, plus each kept tensor (an input kept, an output
    # kept) once, views resolved to the node that owns the storage (the flatten is a view of
    # the relu output the relu keeps)
    def owner(name):
        node = profile.node(name)
        return owner(node.view_of) if node.view_of else node

    kept = {owner(name).name: owner(name) for n in profile.nodes for name in n.saved_inputs}
    kept |= {owner(n.name).name: owner(n.name) for n in profile.nodes if n.saves_output}
    total = sum(n.saved_bytes for n in profile.nodes) + sum(
        node.output_bytes for node in kept.values()
    )
    assert total == sum(storages.values()) == 384 + 512 + 32 + 512


def test_the_loss_by_hand(profile):
    loss, linear = profile.loss, by_target(profile, "Linear")
    assert (loss.op, loss.inputs) == ("loss", (linear.name,))
    # cross-entropy keeps the log-softmax of the logits (2 x 5 x 4 B), the labels (2 x 8 B) and
    # the count of labels it averages over (one float); not the logits themselves
    assert (loss.saved_inputs, loss.saved_bytes) == ((), 40 + 16 + 4)
    # its backward makes the log-softmax gradient and the logits' gradient, each 40 B
    assert 40 <= loss.backward_bytes <= 2 * 40


def test_optimizer_steps_and_gradient_sums_are_timed_where_there_are_weights(profile):
    x, conv, bn, relu, flat, linear = profile.nodes
    # a node's update leaves out what an update call costs whatever it steps (one per stage),
    # which is nearly all of these tiny nodes' (profiler/sequence.py): together they cost more
    assert min(conv.update_ms, bn.update_ms, linear.update_ms) >= 0
    assert conv.update_ms + bn.update_ms + linear.update_ms > 0
    assert min(conv.accumulate_ms, bn.accumulate_ms, linear.accumulate_ms) > 0
    assert x.update_ms == relu.update_ms == flat.update_ms == 0
    assert x.accumulate_ms == relu.accumulate_ms == flat.accumulate_ms == 0


class _ReluThenScale(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 3


class _Residual(torch.nn.Module):
    def forward(self, x):
        h = torch.relu(x)
        return h * 3 + h


def test_backward_peaks_count_the_gradients_a_node_backward_holds():
    """x (4 x 16 floats: 256 B) -> relu -> * 3. The seed is given, not made: the multiply's
    backward makes relu's output gradient (256 B); relu's backward holds that while it makes
    x's, which is a gradient asked for (sent back, or a weight's: counted elsewhere)."""
    x = torch.randn(4, 16, requires_grad=True)
    peaks = backward_peaks(capture(_ReluThenScale(), Batch.positional(x)).graph, (x,))
    assert (peaks["mul"], peaks["relu"]) == (256, 256)


def test_backward_peaks_count_a_pending_residual_gradient():
    """The same, with h also added to the output: while the multiply's backward runs, the
    gradient h got through the add is pending beside it."""
    x = torch.randn(4, 16, requires_grad=True)
    chain = backward_peaks(capture(_ReluThenScale(), Batch.positional(x)).graph, (x,))
    residual = backward_peaks(capture(_Residual(), Batch.positional(x)).graph, (x,))
    assert residual["mul"] > chain["mul"]


def test_backward_peaks_leave_weights_and_their_gradients_out():
    """Two linear layers (64 KiB weights) on one sample: the second's backward takes views of
    its weight and input (no new memory) and makes its weight's gradient (counted whole
    elsewhere); what it holds of its own is the gradient of its input: 128 floats."""
    model = torch.nn.Sequential(
        torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128)
    )
    x = torch.randn(1, 128)
    peaks = backward_peaks(capture(model, Batch.positional(x)).graph, (x,))
    assert peaks["_2"] == 128 * 4
