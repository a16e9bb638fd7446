"""--adapt: with one device slowed (tests/runtime/fixtures/slow_rank.py: RANK 1 computes
everything six times), the run re-plans for the measured speeds, switches off the slow device,
and trains on exactly as switches at those steps would."""

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vpipe.codegen.schema import load_pipeline
from vpipe.common.schedules import BACKWARD, FORWARD
from vpipe.planner.cli import main as plan_main
from vpipe.planner.schema import load_plan
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime.adapt import (
    THRESHOLD,
    BusyWatch,
    LastSwitch,
    Window,
    decide,
    running_plan,
)
from vpipe.runtime.cli import main as train_main
from vpipe.runtime.events import ActionEvent
from vpipe.runtime.switching import Segment

from ..codegen.pipelines import generate, straight
from .references import LR, asp_switched_replay, single_process, stage_of

SLOW = str(Path(__file__).parent / "fixtures" / "slow_rank.py")


@pytest.fixture(scope="module")
def slow_profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("slow") / "profile.yaml"
    argv = [SLOW, "-o", str(path), "-q", "--device", "cpu", "--batch-size", "16", "--threads"]
    assert profile_main([*argv, "1", "--leaf", "Layer", "--repeats", "3"]) == 0
    return path


def planned(profile, directory, *options):
    path = directory / "plan.yaml"
    assert plan_main([str(profile), *straight(2), "-o", str(path), "-q", *options]) == 0
    return generate(path, directory / "out")


def decisions(out):
    with open(out / "run" / "adapt.csv") as file:
        return list(csv.DictReader(file))


def final_weights(out):
    return {
        **torch.load(out / "run" / "final_stage_0.pt"),
        **torch.load(out / "run" / "final_stage_1.pt"),
    }


def expected_checks(switches, steps, every=15, warm_up=4):
    """The steps --adapt checks after, by the rule: `warm_up` steps then every `every` from
    a segment's start (a switch after step c starts the next at c + 1, after asp's drain),
    each with a window's room left in the run."""
    checks, start, check = [], 0, warm_up + every
    while check + every <= steps:
        checks.append(check)
        if check in switches:
            start = check + 1
            check = start + warm_up + every
        else:
            check += every
    return checks


def test_asp_adapts_off_the_slow_stage_and_keeps_weight_stashing(slow_profile, tmp_path, capfd):
    """The first check moves nodes off the slow device. A later check may move more the same
    way (the first re-plan rests on a 15-step window of a noisy host, and a stage's fixed
    costs do not scale with its device), never back; whatever it did, the weights are those
    of a replay that switches where the run says it did."""
    out = planned(slow_profile, tmp_path, "--schedule", "asp")
    steps = 80  # the steps left after the first check are what a switch must pay back
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--lr", str(LR), "--threads"]
    argv += ["1", "--optimizer", "sgd", "--adapt", "--adapt-every", "15"]
    assert train_main(argv) == 0
    made = decisions(out)
    reasons = [row["reason"] for row in made]
    switches = [int(row["step"]) for row in made if row["switched"] == "True"]
    assert switches[:1] == [19], reasons  # the slowed stage was seen as such at once
    assert [int(row["step"]) for row in made] == expected_checks(switches, steps), reasons
    ratios = [float(r) for r in made[0]["ratios"].split()]
    assert ratios[1] > ratios[0] * (1 + THRESHOLD)
    pipeline = load_pipeline(out / "pipeline.yaml")
    segments, first_stage = [(0, stage_of(pipeline))], [len(pipeline.stages[0].nodes)]
    for step in switches:
        plan = out / "run" / "plans" / f"adapt_step_{step + 1}" / "pipeline.yaml"
        switched = load_pipeline(plan)
        segments.append((step + 1, stage_of(switched)))
        first_stage.append(len(switched.stages[0].nodes))
    # each switch moves more nodes onto stage 0, never back
    assert first_stage == sorted(set(first_stage)), first_stage
    assert "step 20: moved" in capfd.readouterr().out
    # each drain, then the new split filling again: as a replay by name
    expected = asp_switched_replay(pipeline, segments, steps)
    for name, tensor in final_weights(out).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)
    # the report says what changed the layout; the timeline shows the switch
    assert train_main([str(out / "pipeline.yaml"), "--report"]) == 0
    said = " ".join(capfd.readouterr().out.split())  # rich wraps long lines
    count = len(switches)
    assert f"--adapt: {len(made)} checks, {count} switch{'es' * (count != 1)}" in said
    assert "switched plans: step 20: moved" in said
    assert (out / "run" / "timeline.png").stat().st_size > 0


def test_1f1b_adapts_and_equals_single_process(slow_profile, tmp_path):
    out = planned(slow_profile, tmp_path, "--schedule", "1f1b", "--microbatches", "2")
    steps = 24
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--lr", str(LR), "--threads"]
    argv += ["1", "--optimizer", "momentum", "--adapt", "--adapt-every", "4"]
    assert train_main(argv) == 0
    assert decisions(out)[0]["switched"] == "True"
    expected, losses = single_process(load_pipeline(out / "pipeline.yaml"), steps)
    for name, tensor in final_weights(out).items():
        torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
    with open(out / "run" / "metrics.csv") as file:
        logged = [float(row["loss"]) for row in csv.DictReader(file)]
    assert logged == pytest.approx(losses, rel=1e-5)


def windows(busy_ms, period_ms=10.0):
    """Every stage's window: these busy times, one pace."""
    return [Window(ms, period_ms) for ms in busy_ms]


def test_a_window_takes_the_median_micro_batch_and_the_mean_pace():
    """A stage's window, by hand: one stalled micro-batch (0.5 s) does not move the busy
    figure (the median of 3, 503 and 3 ms), while the pace (first action's start to last
    one's end, per micro-batch) keeps the stall. Micro-batch 8's forward in one window and its
    backward in the next counts in the next; micro-batches before `first` are not counted."""
    watch = BusyWatch()
    watch.first = 5
    watch.add(ActionEvent(FORWARD, 4, 0.0, 0.001, 0.0, 0.0, 0.0))  # before `first`
    clock = 1.0
    for microbatch, backward_s in ((5, 0.002), (6, 0.502), (7, 0.002), (8, None)):
        watch.add(ActionEvent(FORWARD, microbatch, clock, clock + 0.0015, 0.0005, 0.0, 0.0))
        clock += 0.0015
        if backward_s is not None:
            watch.add(ActionEvent(BACKWARD, microbatch, clock, clock + backward_s, 0.0, 0.0, 0.0))
            clock += backward_s
    first = watch.take()
    assert first.busy_ms == pytest.approx(3.0)  # 1 ms forward (its wait left out) + 2 ms
    assert first.period_ms == pytest.approx((clock - 1.0) * 1e3 / 3)
    watch.add(ActionEvent(BACKWARD, 8, clock, clock + 0.004, 0.0, 0.0, 0.0))
    second = watch.take()
    assert second.busy_ms == pytest.approx(5.0)  # micro-batch 8: its 1 ms forward + 4 ms
    assert second.period_ms == pytest.approx(4.0)


def test_a_decision_keeps_even_stages_and_switches_off_a_slow_one(slow_profile, tmp_path):
    """`decide` alone: measured times in the predictions' proportions keep the plan; stage 1
    at a third of its speed re-plans onto stage 0; measured against that new plan in ITS
    proportions, nothing moves again (the speeds are in the new plan's predictions)."""
    out = planned(slow_profile, tmp_path, "--schedule", "asp")
    segment = Segment(0, 1000, out / "pipeline.yaml", load_pipeline(out / "pipeline.yaml"))
    predicted = [s.predicted.compute_ms for s in running_plan(segment).stages]
    kept, text = decide(segment, 10, windows([2 * p for p in predicted]), 990, tmp_path / "p1.yaml")
    assert not kept.switched and text == "" and not (tmp_path / "p1.yaml").exists()
    slow = windows([2 * predicted[0], 6 * predicted[1]])
    moved, text = decide(segment, 10, slow, 990, tmp_path / "p2.yaml")
    assert moved.switched and moved.planned_ms * (1 + 0.1) <= moved.current_ms
    assert [float(s) for s in moved.speeds.split()] == pytest.approx([1.0, 3.0])
    new = switched_to(tmp_path / "p2.yaml", tmp_path / "new")
    again = windows([2 * s.predicted.compute_ms for s in running_plan(new).stages])
    settled, _ = decide(new, 21, again, 979, tmp_path / "p3.yaml")
    assert not settled.switched


def switched_to(plan, out):
    """The segment a switch to `plan` at step 11 runs."""
    generated = generate(plan, out)
    return Segment(
        11, 1000, generated / "pipeline.yaml", load_pipeline(generated / "pipeline.yaml")
    )


def first_switch(slow_profile, tmp_path):
    """A plan, the switch `decide` makes off its slow stage 1, and the segment after it."""
    out = planned(slow_profile, tmp_path, "--schedule", "asp")
    first = Segment(0, 1000, out / "pipeline.yaml", load_pipeline(out / "pipeline.yaml"))
    predicted = [s.predicted.compute_ms for s in running_plan(first).stages]
    slow = windows([2 * predicted[0], 6 * predicted[1]])
    moved, _ = decide(first, 10, slow, 990, tmp_path / "b.yaml")
    assert moved.switched
    return out / ".." / "plan.yaml", switched_to(tmp_path / "b.yaml", tmp_path / "new")


@pytest.mark.parametrize("before_ms", [12.0, 8.0])
def test_a_switch_that_did_not_pay_is_undone(slow_profile, tmp_path, before_ms):
    """The first check after a switch, its stages even: if the pipeline runs slower per
    micro-batch (10 ms) than before the switch (`before_ms` 8), back to the plan before, and
    no more checks; if faster (12 before), keep it and go on checking. A later check does
    not judge the switch again."""
    before, new = first_switch(slow_profile, tmp_path)
    even = windows([2 * s.predicted.compute_ms for s in running_plan(new).stages], 10.0)
    last = LastSwitch(before=before, period_ms=before_ms)
    judged, text = decide(new, 21, even, 979, tmp_path / "c.yaml", last)
    if before_ms < 10.0:
        assert judged.switched and judged.settled and "did not pay" in judged.reason
        original = [s.nodes for s in load_plan(before).stages]
        assert [s.nodes for s in load_plan(tmp_path / "c.yaml").stages] == original
    else:
        assert not judged.switched and not judged.settled and text == ""
    later, _ = decide(new, 31, even, 969, tmp_path / "d.yaml", replace(last, judged=True))
    assert not later.switched and not later.settled


@pytest.mark.parametrize("before_ms", [12.0, 8.0])
def test_a_re_plan_that_would_undo_the_last_switch_settles(slow_profile, tmp_path, before_ms):
    """After a switch that moved nodes onto stage 0 (and paid: judged), measurements that
    would move them back (a device whose speed depends on its load) settle the run: on the
    split it runs if that runs faster (10 ms per micro-batch) than the one before the switch
    (`before_ms` 12), else back on that one."""
    before, new = first_switch(slow_profile, tmp_path)
    last = LastSwitch(before=before, period_ms=before_ms, judged=True)
    now = running_plan(new).stages
    back = windows([6 * now[0].predicted.compute_ms, 2 * now[1].predicted.compute_ms], 10.0)
    settled, text = decide(new, 21, back, 979, tmp_path / "c.yaml", last)
    assert settled.settled and "move nodes back" in settled.reason
    if before_ms > 10.0:  # this split runs faster: stay
        assert not settled.switched and text == ""
    else:  # the split before the switch ran faster: back to it
        assert settled.switched
        original = [s.nodes for s in load_plan(before).stages]
        assert [s.nodes for s in load_plan(tmp_path / "c.yaml").stages] == original
    # without the memory of the last switch, the same figures would switch again
    again, _ = decide(new, 21, back, 979, tmp_path / "d.yaml")
    assert again.switched and not again.settled


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--resume"], "--resume"),
        (["--switch-plan", "2:{plan}"], "--switch-plan"),
        (["--checkpoint-every", "2"], "--checkpoint-every under asp"),
    ],
)
def test_what_adapt_does_not_support_is_refused_up_front(
    slow_profile, tmp_path, capsys, options, said
):
    out = planned(slow_profile, tmp_path, "--schedule", "asp")
    options = [o.format(plan=tmp_path / "plan.yaml") for o in options]
    argv = [str(out / "pipeline.yaml"), "--steps", "8", "--adapt", *options]
    assert train_main(argv) != 0
    assert said in capsys.readouterr().err
    assert not (out / "run" / "metrics.csv").exists()
