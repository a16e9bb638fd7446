"""Capture granularity and the --leaf escape hatch."""

import pytest
import torch

from vpipe.common.capture import capture
from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import Batch, load_model_file
from vpipe.models import gpt


def test_untraceable_block_names_the_module_and_the_flag(fixtures):
    model_file = load_model_file(str(fixtures / "untraceable.py"))
    model = model_file.build_model()
    with pytest.raises(VpipeError, match=r"'1' \(Gate\).*--leaf Gate"):
        capture(model, model_file.batch(4, 0))


def test_leaf_makes_it_traceable_and_keeps_the_block_whole(fixtures):
    model_file = load_model_file(str(fixtures / "untraceable.py"))
    model = model_file.build_model()
    batch = model_file.batch(4, 0)
    gm = capture(model, batch, leaves=["Gate"]).graph
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets == ["0", "1", "2"]
    torch.testing.assert_close(gm(*batch.args), batch.call(model))


def test_unknown_leaf_class_is_reported():
    with pytest.raises(VpipeError, match="no submodule of this model has that class"):
        capture(torch.nn.Linear(2, 2), Batch.positional(torch.ones(1, 2)), leaves=["Attention"])


def test_gpt_granularity_and_leaf_blocks():
    config = gpt.GPTConfig(seq_len=128, d_model=256, n_heads=8, n_layers=12)
    model = gpt.build_model(config)
    idx, _ = gpt.make_batch(2, 0, config)
    fine = capture(model, Batch.positional(idx)).graph
    assert 100 < len(fine.graph.nodes) < 400  # a few hundred, not thousands of tiny ops
    coarse = capture(model, Batch.positional(idx), leaves=["Block"]).graph
    blocks = [n for n in coarse.graph.nodes if n.op == "call_module" and "blocks" in n.target]
    assert len(blocks) == 12 and len(coarse.graph.nodes) < 30
    torch.testing.assert_close(coarse(idx), model(idx))


@pytest.mark.parametrize(("fixture", "outputs"), [("optional_mask.py", 1), ("lstm_head.py", 3)])
def test_what_fx_gets_wrong_goes_through_export(fixtures, fixture, outputs):
    """fx traces both, but wrongly: an input make_batch does not give, one output node holding
    three tensors. The check against the model sends them to export, which gets them right."""
    model_file = load_model_file(str(fixtures / fixture))
    model = model_file.build_model()
    batch = model_file.batch(4, 0)
    captured = capture(model, batch)
    assert captured.route == "export"
    assert captured.input_keys == ("0",) and len(captured.output_leaves) == outputs
    torch.manual_seed(0)
    expected = batch.call(model)
    torch.manual_seed(0)
    output = captured.output(captured.graph(*batch.args))
    assert type(output) is type(expected)
    for got, want in zip(
        torch.utils._pytree.tree_leaves(output),
        torch.utils._pytree.tree_leaves(expected),
        strict=True,
    ):
        assert torch.equal(got, want)
