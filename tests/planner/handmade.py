"""Small profiles written out by hand, for tests whose every figure is worked out by hand."""

from __future__ import annotations

from vpipe.profiler.schema import NodeProfile, Profile, TensorMeta


def node(
    name, inputs, out, params=0, saved=0, kept=(), saves_output=False, fwd=1.0, grads=0, dense=True
) -> NodeProfile:
    """A node of one float32 output of `out` bytes (none when `out` is 0: a value that is not a
    tensor), `fwd` ms forward and twice that backward."""
    return NodeProfile(
        name=name,
        op="placeholder" if not inputs else "call_module",
        target="T",
        inputs=inputs,
        outputs=(TensorMeta((out // 4,), "float32", dense),) if out else (),
        forward_ms=fwd,
        backward_ms=2 * fwd,
        param_bytes=params,
        grad_bytes=params,
        buffer_bytes=0,
        output_bytes=out,
        saved_bytes=saved,
        saved_inputs=kept,
        saves_output=saves_output,
        backward_bytes=grads,
    )


def profile(outputs: tuple[str, ...], nodes: tuple[NodeProfile, ...], optimizer="sgd") -> Profile:
    return Profile(
        source="hand",
        source_kind="model",
        device="cpu",
        dtype="float32",
        batch_size=1,
        optimizer=optimizer,
        outputs=outputs,
        nodes=nodes,
    )
