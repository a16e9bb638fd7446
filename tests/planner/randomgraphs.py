"""Random small profiles for property tests: DAGs with skips, views, kept inputs and outputs,
backward peaks, outputs a send must copy, transfers that cost CPU time, and (on request)
parameters several nodes share."""

from __future__ import annotations

import dataclasses
import math
import random

from vpipe.planner.costmodel import evaluate_stage
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import PlanGraph, plan_graph
from vpipe.planner.schema import PlanSettings
from vpipe.profiler.schema import LinkCost, NodeProfile, Profile, TensorMeta, Tie


def random_profile(seed: int, size: int, ties: bool = False) -> Profile:
    """With `ties`, one or two parameters used by 2-3 nodes each (charged to the first)."""
    rng = random.Random(seed)
    nodes: list[NodeProfile] = []
    for i in range(size):
        name = f"n{i}"
        if i == 0:
            inputs: tuple[str, ...] = ()
        else:
            pool = [f"n{j}" for j in range(i)]
            skips = rng.sample(pool, min(len(pool), rng.randint(0, 1)))
            inputs = tuple(sorted({f"n{i - 1}", *skips}))
        is_view = i > 0 and len(inputs) == 1 and rng.random() < 0.2
        out = nodes[int(inputs[0][1:])].output_bytes if is_view else rng.randint(1, 8) * 100
        saves_output = not is_view and rng.random() < 0.4
        internal = rng.choice([0, 0, 50, 120])
        params = rng.choice([0, 400, 1000])
        backward = 0 if i == 0 else rng.choice([0, 100, 250, 300, 700, 900])
        dense = is_view or rng.random() < 0.7  # a send copies an output that is not
        nodes.append(
            NodeProfile(
                name=name,
                op="placeholder" if i == 0 else "call_module",
                target="T",
                inputs=inputs,
                outputs=(TensorMeta((out // 4,), "float32", dense),),
                forward_ms=0.0 if i == 0 else rng.randint(1, 9) / 2,
                backward_ms=0.0 if i == 0 else rng.randint(1, 9),
                param_bytes=params,
                grad_bytes=params,
                buffer_bytes=0,
                output_bytes=out,
                saved_bytes=internal,
                saved_inputs=tuple(p for p in inputs if rng.random() < 0.5),
                saves_output=saves_output,
                view_of=inputs[0] if is_view else "",
                backward_bytes=backward,
            )
        )
    shared = _random_ties(random.Random(seed + 10**6), nodes) if ties else ()
    for tie in shared:
        owner = int(tie.users[0][1:])
        trainable = tie.bytes if tie.trainable else 0
        nodes[owner] = dataclasses.replace(
            nodes[owner],
            param_bytes=nodes[owner].param_bytes + tie.bytes,
            grad_bytes=nodes[owner].grad_bytes + trainable,
        )
    return Profile(
        source=f"random-{seed}",
        source_kind="model",
        device="cpu",
        dtype="float32",
        batch_size=4,
        optimizer="sgd",
        nodes=tuple(nodes),
        outputs=(f"n{size - 1}",),
        # 0-1 ms a message, 0-4 ms per 400 B: as much as a node's compute
        link=LinkCost("gloo", rng.choice([0.0, 0.5, 1.0]), rng.choice([0.0, 2**20 / 100])),
        ties=shared,
    )


def _random_ties(rng: random.Random, nodes: list[NodeProfile]) -> tuple[Tie, ...]:
    """Parameters shared by 2-3 nodes (never the input): bytes as large as a layer's or more,
    mostly trainable."""
    layers = [n.name for n in nodes[1:]]
    if len(layers) < 2:
        return ()
    return tuple(
        Tie(
            names=(f"tied{k}.weight", f"tied{k}.alias"),
            bytes=rng.choice([400, 1000, 3000]),
            trainable=rng.random() < 0.8,
            users=tuple(
                sorted(
                    rng.sample(layers, rng.randint(2, min(3, len(layers)))),
                    key=lambda n: int(n[1:]),
                )
            ),
        )
        for k in range(rng.randint(1, 2))
    )


TIED_SEEDS = range(250, 330)  # cases whose graphs share parameters between nodes


def case_profile(seed: int) -> Profile:
    """The profile `random_case(seed)` plans. In two seeds of three every stage pays an update
    call after each backward (`PlanGraph.call_ms`)."""
    profile = random_profile(seed, random.Random(seed).randint(2, 9), ties=seed in TIED_SEEDS)
    return dataclasses.replace(
        profile, update_call_ms=seed % 3 * 0.75, accumulate_call_ms=seed % 3 * 0.25
    )


def random_case(seed: int) -> tuple[PlanGraph, PlanSettings]:
    """A small graph and settings; most memory caps sit just below what the unconstrained
    optimum needs, where recompute decides feasibility and speed. Seeds from 250 on share
    parameters between nodes (ties), so stages holding copies pay for them."""
    rng = random.Random(seed)
    rng.randint(2, 9)  # the graph's size, drawn again by case_profile
    profile = case_profile(seed)
    settings = PlanSettings(
        gpus=rng.randint(1, min(4, plan_graph(profile).size)),
        memory_bytes=math.inf,
        bandwidth_gbps=rng.choice([math.inf, 0.001, 0.0002]),  # GB/s: bytes here are small
        schedule=rng.choice(["asp", "asp", "1f1b", "gpipe"]),
        microbatches=rng.choice([1, 2, 4]),
    )
    # the calls' rates are the schedule's, as the planner indexes the profile for it
    graph = plan_graph(profile, schedule=settings.schedule, microbatches=settings.microbatches)
    if rng.random() < 0.8:
        free = solve_dp(graph, settings)
        before: list[int] = []
        need = 0
        for index, stage in enumerate(free.stages):
            need = max(need, evaluate_stage(graph, settings, index, before, stage, ()).memory.total)
            before += stage
        settings = dataclasses.replace(settings, memory_bytes=need * rng.uniform(0.6, 1.0))
    return graph, settings
