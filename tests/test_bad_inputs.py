"""The bad-input catalogue: every command against every bad input the issues name, and those
found since.

Each must fail the way vpipe promises a user: one line on stderr, `<command>: error: ...`, that
names the problem (and usually the fix), exit status 2, no traceback, and no file written or
overwritten. Under vpipe-train's local launcher the line names the failing stage and its log
(`vpipe-train: error: stage 1: ... (full traceback: out/run/logs/stage_1.log)`), which must
hold the traceback; nothing else the stages say reaches the terminal.

Every case runs in a fresh copy of one set of real artefacts (a profile, a plan and a generated
pipeline of the bundled MLP; a profile and plan of the tied test model, a model *file* a case can
edit), all named relative to that folder, so a case edits its copy and nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vpipe.codegen import schema as pipeline_schema
from vpipe.codegen.cli import main as generate_main
from vpipe.codegen.schema import load_pipeline
from vpipe.common.optim import Updater
from vpipe.planner import schema as plan_schema
from vpipe.planner.cli import main as plan_main
from vpipe.planner.schema import Stage, load_plan, save_plan
from vpipe.profiler import schema as profile_schema
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime import checkpoint, rng, settings
from vpipe.runtime.cli import main as train_main

from .codegen.pipelines import QUICK_PROFILE, generate, plan, profile, straight

HERE = Path(__file__).parent
FIXTURES = HERE / "profiler" / "fixtures"
TIED = HERE / "codegen" / "fixtures" / "tied.py"

# The artefacts every case starts from, relative to its folder.
PROFILE = "mlp.profile.yaml"
PLAN = "plan2.yaml"
PIPELINE = "out/pipeline.yaml"
TIED_PLAN = "tied.plan.yaml"
TIED_OUT = "tied_out"
TRAINED_RUN = "trained_run"  # a real run of out/pipeline.yaml, for the cases that read one
CHECKPOINTS = Path("out/run/checkpoints")

Build = Callable[[pytest.MonkeyPatch], object]  # edits the case's folder (the cwd)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real artefacts, built once: the MLP split after its 4th node (so the tensor between the
    stages is known: layers_2, [4, 128]), generated to out/; the tied model profiled and planned."""
    root = tmp_path_factory.mktemp("made")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        planned = load_plan(plan(profile("mlp", Path(".")), 2, Path("."), False))
        nodes = [n for s in planned.stages for n in s.nodes]
        stages = tuple(
            replace(stage, nodes=tuple(part), recompute=())
            for stage, part in zip(planned.stages, (nodes[:4], nodes[4:]), strict=True)
        )
        save_plan(replace(planned, stages=stages), PLAN)
        generate(Path(PLAN), Path("out"))
        shutil.copy(TIED, "tied.py")
        assert profile_main(["tied.py", "-o", "tied.profile.yaml", *QUICK_PROFILE]) == 0
        assert plan_main(["tied.profile.yaml", *straight(2), "-o", TIED_PLAN, "-q"]) == 0
        generate(Path(TIED_PLAN), Path(TIED_OUT))
        assert train_main([PIPELINE, "--steps", "1", "--threads", "1"]) == 0
        shutil.move("out/run", TRAINED_RUN)
    return root


# Builders: what a case does to its copy before the command runs.


def both(first: Build, second: Build) -> Build:
    def build(monkeypatch: pytest.MonkeyPatch) -> None:
        first(monkeypatch)
        second(monkeypatch)

    return build


def truncate(path: str) -> Build:
    def build(_: pytest.MonkeyPatch) -> None:
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    return build


def resave(path: str, name: str, tensor: torch.Tensor) -> Build:
    def build(_: pytest.MonkeyPatch) -> None:
        saved = torch.load(path)
        saved[name] = tensor
        torch.save(saved, path)

    return build


def nothing(_: pytest.MonkeyPatch) -> None:
    pass


def write(path: str, text: str | bytes) -> Build:
    def build(_: pytest.MonkeyPatch) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            Path(path).write_bytes(text)
        else:
            Path(path).write_text(text)

    return build


def edit(path: str, pattern: str, replacement: str) -> Build:
    """Replace the first match of the regular expression `pattern` in `path`."""

    def build(_: pytest.MonkeyPatch) -> None:
        text = Path(path).read_text()
        edited = re.sub(pattern, replacement, text, count=1, flags=re.MULTILINE)
        assert edited != text, f"{pattern!r} is not in {path}"
        Path(path).write_text(edited)

    return build


def remove(path: str) -> Build:
    return lambda _: Path(path).unlink()


def env(**variables: str) -> Build:
    def build(mp: pytest.MonkeyPatch) -> None:
        for name, value in variables.items():
            mp.setenv(name, value)

    return build


def restage(change: Callable[[Stage, Stage], tuple[Stage, Stage]]) -> Build:
    """Edit the plan's split by hand: `change(stage 0, stage 1)` gives the new stages."""

    def build(_: pytest.MonkeyPatch) -> None:
        planned = load_plan(PLAN)
        save_plan(replace(planned, stages=change(*planned.stages)), PLAN)

    return build


def checkpoints(step: int, plan_sha256: str | None = None) -> Build:
    """Both stages' checkpoint after `step`, written by the runtime's own writer; of the
    generated pipeline's plan unless another plan's sha256 is given."""

    def build(_: pytest.MonkeyPatch) -> None:
        sha = plan_sha256 or load_pipeline(PIPELINE).plan_sha256
        identity = checkpoint.identity(sha, "asp", "sgd")
        for stage in (0, 1):
            record = checkpoint.StageState(  # the stage's initial weights, nothing in flight
                weights=torch.load(f"out/weights/stage_{stage}.pt"),
                versions=(),
                replicas=(checkpoint.ReplicaState(buffers={}, in_flight=(), rng=rng.get_state()),),
                skipped=0,
            )
            checkpoint.save(CHECKPOINTS, step, stage, 2, record, Updater("sgd", 0.1), identity, 2)

    return build


def trained(_: pytest.MonkeyPatch) -> None:
    """A real run of one step in out/run, for --report to read (`made` trained it once)."""
    shutil.copytree(TRAINED_RUN, "out/run")


def recheckpoint(stage: int, change: Callable[[dict], object]) -> Build:
    """Stage `stage`'s checkpoint after step 1, as `change` makes it from the saved one."""

    def build(_: pytest.MonkeyPatch) -> None:
        path = CHECKPOINTS / "step_1" / f"stage_{stage}.pt"
        torch.save(change(torch.load(path)), path)

    return build


def pipedream_plan(_: pytest.MonkeyPatch) -> None:
    """A plan of a profile imported from PipeDream: it has no model behind it."""
    Path("graph.txt").write_text(
        "node1 -- Input0 -- forward_compute_time=0.0, backward_compute_time=0.0, "
        "activation_size=64.0, parameter_size=0.0\n"
        "node2 -- Linear(4, 4) -- forward_compute_time=1.5, backward_compute_time=2.5, "
        "activation_size=64.0, parameter_size=80.0\n"
        "node3 -- Linear(4, 4) -- forward_compute_time=1.5, backward_compute_time=2.5, "
        "activation_size=64.0, parameter_size=80.0\n"
        "\tnode1 -- node2\n\tnode2 -- node3\n"
    )
    assert profile_main(["--import-pipedream", "graph.txt", "-o", "pd.yaml", "-q"]) == 0
    assert plan_main(["pd.yaml", *straight(2), "-o", "pd.plan.yaml", "-q"]) == 0


def backward_edge(first: Stage, second: Stage) -> tuple[Stage, Stage]:
    """The model input moves to stage 1, but stage 0 still reads it."""
    moved = (first.nodes[0], *second.nodes)
    return replace(first, nodes=first.nodes[1:]), replace(second, nodes=moved)


def missing_node(first: Stage, second: Stage) -> tuple[Stage, Stage]:
    return first, replace(second, nodes=second.nodes[:-1])


def node_twice(first: Stage, second: Stage) -> tuple[Stage, Stage]:
    """Stage 0's last node on stage 1 as well."""
    return first, replace(second, nodes=(first.nodes[-1], *second.nodes))


def foreign_recompute(first: Stage, second: Stage) -> tuple[Stage, Stage]:
    """Stage 0 recomputes stage 1's first node."""
    return replace(first, recompute=(second.nodes[0],)), second


# The catalogue, one table per command: each case is (its name, argv, what its one line must
# say, what is done to the case's copy first).


def case(name: str, argv: list, expected: str | tuple[str, ...], build: Build = nothing, **kw):
    return pytest.param(build, argv, expected, id=name, **kw)


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
HANDBUILT = FIXTURES / "handbuilt.py"
MODEL = "import torch\n\n\ndef build_model():\n    {}\n\n\ndef make_batch(b, s):\n    {}\n"
LINEAR = "return torch.nn.Linear(2, 2)"
BATCH = "return torch.zeros(b, 2), torch.zeros(b, dtype=torch.long)"

# a lock of a run that is alive: this test's own process
LIVE_LOCK = write("out/run/.lock", f"{os.getpid()} {socket.gethostname()}\n")

PROFILER = [
    case(
        "a seed torch cannot take",
        ["m.py", "--seed", str(2**70)],
        f"argument --seed: must be from 0 to {2**62 - 1} (got {2**70})",
        write("m.py", MODEL.format(LINEAR, BATCH)),
    ),
    case(
        "a loss that is nan on the first batch",
        ["m.py"],
        "m.py: the loss on make_batch(8, 0) is nan: training would stop at its first step",
        write(
            "m.py",
            MODEL.format(LINEAR, BATCH)
            + "\n\ndef loss_fn(output, target):\n    return output.sum() * float('nan')\n",
        ),
    ),
    case(
        "a make_batch with NaN inputs (the same batch each call: NaN is not a draw)",
        ["m.py"],
        "m.py: the loss on make_batch(8, 0) is nan",
        write(
            "m.py",
            MODEL.format(
                LINEAR, "return torch.full((b, 2), float('nan')), torch.zeros(b, dtype=torch.long)"
            ),
        ),
    ),
    case(
        "-o is the model file",
        ["m.py", "-o", "m.py"],
        "-o m.py is the model file, which this command reads; writing there would replace it",
        write("m.py", MODEL.format(LINEAR, BATCH)),
    ),
    case(
        "model file that exits at import",
        ["m.py"],
        "m.py exited (SystemExit: 0) while vpipe imported it",
        write("m.py", "import sys\n\nsys.exit(0)\n"),
    ),
    case(
        "model file that parses the command line at import",
        ["m.py", "--batch-size", "4"],
        ("m.py exited (SystemExit: 2)", 'under `if __name__ == "__main__":`'),
        write("m.py", "import argparse\n\nargparse.ArgumentParser().parse_args()\n"),
    ),
    case(
        "a YAML file as the model",
        ["p.yaml"],
        "p.yaml is not a Python file",
        write("p.yaml", "nodes: []\n"),
    ),
    case(
        "make_batch drawing from the global random state",
        ["m.py"],
        ("make_batch(8, 0) gave a different input 0 when called again", "manual_seed(step)"),
        write(
            "m.py",
            MODEL.format(LINEAR, "return torch.randn(b, 2), torch.zeros(b, dtype=torch.long)"),
        ),
    ),
    case(
        "a model on the meta device",
        ["m.py"],
        "build_model() returned a model on the meta device",
        write("m.py", MODEL.format("return torch.nn.Linear(2, 2, device='meta')", BATCH)),
    ),
    case(
        "a batch on the meta device",
        ["m.py"],
        "make_batch's input 0 is on the meta device",
        write(
            "m.py",
            MODEL.format(
                LINEAR, BATCH.replace("torch.zeros(b, 2)", "torch.zeros(b, 2, device='meta')")
            ),
        ),
    ),
    case("missing model file", ["nowhere.py"], "model file nowhere.py not found"),
    case("unknown module", ["no_such_pkg.model"], "no model file or importable module"),
    case("no model at all", [], "no model given"),
    case(
        "model file that does not import",
        ["m.py"],
        "importing m.py failed: SyntaxError",
        write("m.py", "def f(:\n"),
    ),
    case("file without build_model", [FIXTURES / "no_build.py"], "defines no build_model()"),
    case(
        "file without make_batch",
        ["m.py"],
        "defines no make_batch()",
        write("m.py", f"import torch\n\n\ndef build_model():\n    {LINEAR}\n"),
    ),
    case(
        "build_model raises",
        ["m.py"],
        "build_model() failed: ValueError: boom",
        write("m.py", MODEL.format("raise ValueError('boom')", BATCH)),
    ),
    case(
        "build_model returns no module",
        ["m.py"],
        "build_model() returned a int, not a torch.nn.Module",
        write("m.py", MODEL.format("return 3", BATCH)),
    ),
    case(
        "make_batch returns no (inputs, target)",
        ["m.py"],
        "make_batch must return (inputs, target), got Tensor",
        write("m.py", MODEL.format(LINEAR, "return torch.zeros(b, 2)")),
    ),
    case(
        "make_batch of the wrong shape",
        [FIXTURES / "wrong_batch.py"],
        "the model's forward failed on make_batch(8, 0)",
    ),
    case(
        "untraceable model without --leaf",
        [FIXTURES / "untraceable.py"],
        ("torch.fx cannot trace", "profile it whole with --leaf Gate"),
    ),
    case(
        "--leaf of a class the model lacks",
        [HANDBUILT, "--leaf", "Nope"],
        "--leaf Nope: no submodule of this model has that class",
    ),
    case(
        "--device cuda without a GPU",
        [HANDBUILT, "--device", "cuda"],
        "no CUDA GPU is visible to PyTorch on this machine; use --device cpu",
        marks=NO_GPU,
    ),
    case("--device of no kind", [HANDBUILT, "--device", "tpu"], "invalid choice: 'tpu'"),
    case(
        "--batch-size 0",
        [HANDBUILT, "--batch-size", "0"],
        "argument --batch-size: must be at least 1 (got 0)",
    ),
    case(
        "--repeats 0",
        [HANDBUILT, "--repeats", "0"],
        "argument --repeats: must be at least 1 (got 0)",
    ),
    case(
        "--warmup -1",
        [HANDBUILT, "--warmup", "-1"],
        "argument --warmup: must be at least 0 (got -1)",
    ),
    case("--repeats not a number", [HANDBUILT, "--repeats", "x"], "'x' is not a whole number"),
    case(
        "--min-time -1",
        [HANDBUILT, "--min-time", "-1"],
        "argument --min-time: must be at least 0 seconds (got -1)",
    ),
    case(
        "--min-time nan", [HANDBUILT, "--min-time", "nan"], "must be at least 0 seconds (got nan)"
    ),
    case(
        "output in a missing directory",
        [HANDBUILT, "--repeats", "1", "--min-time", "0", "--warmup", "0", "-o", "no/dir/p.yaml"],
        "cannot write no/dir/p.yaml: No such file or directory",
    ),
    case(
        "--plot in a missing directory",
        [HANDBUILT, "--plot", "no/dir/p.png"],
        "cannot write plot no/dir/p.png: no/dir is not a directory",
    ),
    case(
        "missing graph.txt", ["--import-pipedream", "g.txt"], "cannot read PipeDream profile g.txt"
    ),
    case(
        "malformed graph.txt",
        ["--import-pipedream", "g.txt"],
        "g.txt, line 1: cannot parse node line",
        write("g.txt", "node1 ReLU\n"),
    ),
    case("a model and a graph.txt", ["m.py", "--import-pipedream", "g.txt"], "not both"),
]

TWO = straight(2)

PLANNER = [
    case(
        "-o is the model file the profile names",
        ["tied.profile.yaml", *TWO, "-o", "tied.py"],
        "-o tied.py is the file the profile was made from, which this command reads",
    ),
    case(
        "a profile's batch size written as text",
        [PROFILE, *TWO],
        "batch_size: expected a whole number, got 'eight' (str); re-run vpipe-profile",
        edit(PROFILE, r"^batch_size: \d+$", "batch_size: eight"),
    ),
    case(
        "a profile with a negative byte count",
        [PROFILE, *TWO],
        "nodes[0].param_bytes: -5 is below 0",
        edit(PROFILE, r"param_bytes: \d+", "param_bytes: -5"),
    ),
    case(
        "a profile whose node inputs are no list",
        [PROFILE, *TWO],
        "nodes[1].inputs: expected a list, got 'x' (str)",
        edit(PROFILE, r"inputs: \[x\]", "inputs: x"),
    ),
    case(
        "a profile with a NaN time",
        [PROFILE, *TWO],
        "nodes[0].forward_ms: nan is not a finite number; re-run vpipe-profile",
        edit(PROFILE, r"forward_ms: [\d.e-]+", "forward_ms: .nan"),
    ),
    case("-o is the profile", [PROFILE, *TWO, "-o", PROFILE], f"-o {PROFILE} is the profile"),
    case(
        "-o and --plot one file",
        [PROFILE, *TWO, "-o", "x.png", "--plot", "x.png"],
        "--plot and -o both name x.png",
    ),
    case("missing profile", ["nowhere.yaml", *TWO], "cannot read profile nowhere.yaml"),
    case(
        "profile of another schema version",
        [PROFILE, *TWO],
        f"schema_version 99 is not {profile_schema.SCHEMA_VERSION}; re-run vpipe-profile",
        edit(PROFILE, r"^schema_version: \d+$", "schema_version: 99"),
    ),
    case(
        "corrupt YAML",
        ["p.yaml", *TWO],
        ("p.yaml is not valid YAML: ", "expected ',' or ']'", " at line 2"),  # libyaml's words
        write("p.yaml", "nodes: [1, 2\n"),
    ),
    case(
        "YAML that is no mapping",
        ["p.yaml", *TWO],
        "p.yaml: not a vpipe profile (expected a mapping at the top level)",
        write("p.yaml", "- a\n- b\n"),
    ),
    case("empty profile", ["p.yaml", *TWO], "p.yaml: not a vpipe profile", write("p.yaml", "")),
    case(
        "binary profile", ["p.yaml", *TWO], "is not a text file", write("p.yaml", b"\xff\xfe\x00")
    ),
    case(
        "a plan given as the profile",
        [PLAN, *TWO],
        f"{PLAN} is a plan, not a profile: give the profile",
    ),
    case("--gpus 0", [PROFILE, "--gpus", "0"], "argument --gpus: must be at least 1 (got 0)"),
    case(
        "more gpus than nodes",
        [PROFILE, *straight(12)],
        "--gpus 12 is more than the profile's",
    ),
    case("--gpus missing", [PROFILE], "the following arguments are required: --gpus"),
    case(
        "memory cap nothing fits",
        [PROFILE, *TWO, "--memory", "0.00001"],
        ("no plan fits 9.4 KiB per device", "with every node recomputed", "try more --gpus"),
    ),
    case(
        "a split rule that does not fit",
        [PROFILE, *TWO, "--split", "uniform", "--memory", "0.0001"],
        ("the uniform split does not fit: stage 0 needs", "plan with --split optimal"),
    ),
    case("--memory 0", [PROFILE, *TWO, "--memory", "0"], "argument --memory: '0' must be positive"),
    case(
        "--memory not a number",
        [PROFILE, *TWO, "--memory", "lots"],
        "'lots' is not a number or inf; or give a unit: 12MiB, 1.5GiB",
    ),
    case(
        "--memory a unit without a number",
        [PROFILE, *TWO, "--memory", "0MiB"],
        "'0MiB' is not a positive number of MiB",
    ),
    case("--bandwidth negative", [PROFILE, *TWO, "--bandwidth", "-1"], "'-1' must be positive"),
    case(
        "--bandwidth not a number",
        [PROFILE, *TWO, "--bandwidth", "x"],
        "'x' is not a number or inf",
    ),
    case(
        "--headroom 1",
        [PROFILE, *TWO, "--headroom", "1"],
        "argument --headroom: must be in [0, 1) (got 1)",
    ),
    case(
        "--microbatches under asp",
        [PROFILE, *TWO, "--microbatches", "4"],
        "--microbatches is for --schedule 1f1b or gpipe",
    ),
    case(
        "--microbatches 0",
        [PROFILE, *TWO, "--schedule", "1f1b", "--microbatches", "0"],
        "argument --microbatches: must be at least 1 (got 0)",
    ),
    case(
        "output in a missing directory",
        [PROFILE, *TWO, "-o", "no/dir/plan.yaml"],
        "cannot write no/dir/plan.yaml: No such file or directory",
    ),
    case(
        "--plot in a missing directory",
        [PROFILE, *TWO, "--plot", "no/dir/plan.png"],
        "cannot write plot no/dir/plan.png: no/dir is not a directory",
    ),
]

CODEGEN = [
    case(
        "a plan for an optimizer vpipe does not have",
        [PLAN, "-o", "new"],
        f"{PLAN}: not a valid plan: --optimizer lamb: use one of sgd, momentum, adam, adamw",
        edit(PLAN, r"^  optimizer: sgd$", "  optimizer: lamb"),
    ),
    case(
        "a plan whose gpus is a list",
        [PLAN, "-o", "new"],
        "settings.gpus: expected a whole number, got [2] (list); re-run vpipe-plan",
        edit(PLAN, r"^  gpus: 2$", "  gpus: [2]"),
    ),
    case(
        "a plan whose stage lost its nodes field",
        [PLAN, "-o", "new"],
        "stages[1]: missing field nodes",
        edit(PLAN, r"^(- index: 1\n)  nodes: \[[^\]]*\]\n", r"\1"),
    ),
    case(
        "a plan with a negative memory figure",
        [PLAN, "-o", "new"],
        "stages[0].predicted.memory.grads: -1 is below 0",
        edit(PLAN, r"grads: \d+", "grads: -1"),
    ),
    case(
        "a plan with a NaN prediction",
        [PLAN, "-o", "new"],
        "stages[0].predicted.time_ms: nan is not a finite number; re-run vpipe-plan",
        edit(PLAN, r"time_ms: [\d.e-]+", "time_ms: .nan"),
    ),
    case(
        "out/ in use by a run",
        [PLAN, "-o", "out"],
        "out/run is in use by vpipe-train pid",
        LIVE_LOCK,
    ),
    case("missing plan", ["nowhere.yaml"], "cannot read plan nowhere.yaml"),
    case(
        "plan of another schema version",
        [PLAN],
        f"schema_version 99 is not {plan_schema.SCHEMA_VERSION}; re-run vpipe-plan",
        edit(PLAN, r"^schema_version: \d+$", "schema_version: 99"),
    ),
    case("a profile given as the plan", [PROFILE], f"{PROFILE} is a profile, not a plan"),
    case(
        "plan whose profile changed",
        [PLAN, "-o", "new"],
        f"{PROFILE} changed since {PLAN} was planned from it",
        edit(PROFILE, r"\Z", "# edited\n"),
    ),
    case(
        "plan whose profile is gone",
        [PLAN, "-o", "new"],
        f"names the profile {PROFILE}, which is not there",
        remove(PROFILE),
    ),
    case(
        "plan of a PipeDream profile",
        ["pd.plan.yaml", "-o", "new"],
        "imported from PipeDream: it has no model to generate code from",
        pipedream_plan,
    ),
    case(
        "model file changed since profiling",
        [TIED_PLAN, "-o", "new"],
        "tied.py changed since it was profiled",
        edit("tied.py", r"\Z", "# edited\n"),
    ),
    case(
        "traced graph changed since profiling",
        [TIED_PLAN, "-o", "new"],
        "the model's graph no longer matches the profile",
        env(VPIPE_TEST_DEPTH="4"),
    ),
    case(
        "hand-edited plan with a backward edge",
        [PLAN, "-o", "new"],
        "from the later stage 1",
        restage(backward_edge),
    ),
    case(
        "hand-edited plan placing a node on two stages",
        [PLAN, "-o", "new"],
        "plan2.yaml: stage 1 repeats nodes of an earlier stage: layers_2",
        restage(node_twice),
    ),
    case(
        "hand-edited plan recomputing a node of another stage",
        [PLAN, "-o", "new"],
        "plan2.yaml: stage 0 recomputes nodes it does not own: layers_3",
        restage(foreign_recompute),
    ),
    case(
        "hand-edited plan missing a node",
        [PLAN, "-o", "new"],
        "places no stage on nodes",
        restage(missing_node),
    ),
    case(
        "output dir that is not vpipe's",
        [PLAN, "-o", "mine"],
        "mine exists and is not a vpipe-gen output",
        write("mine/notes.txt", "mine"),
    ),
    case(
        "output that is a file",
        [PLAN, "-o", "mine"],
        "cannot write mine: it is a file, not a directory",
        write("mine", "mine"),
    ),
    case(
        "output inside a file",
        [PLAN, "-o", "mine/out"],
        "cannot write mine/out: mine is a file",
        write("mine", "mine"),
    ),
    case(
        "output in a missing directory",
        [PLAN, "-o", "no/such/out"],
        "cannot write no/such/out: no/such does not exist",
    ),
    case("output name too long", [PLAN, "-o", "x" * 250], ("cannot write x", "File name too long")),
]

STEP = ["--steps", "1", "--threads", "1"]
RUN_CONFIG = [PIPELINE, "--config", "run.yml"]

TRAIN = [
    case(
        "a truncated checkpoint",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1"],
        ("step_1/stage_", ".pt cannot be read, it is damaged", "to resume from the step before"),
        both(
            both(checkpoints(1), truncate(str(CHECKPOINTS / "step_1" / "stage_0.pt"))),
            truncate(str(CHECKPOINTS / "step_1" / "stage_1.pt")),
        ),
    ),
    case(
        "a weights file where a checkpoint should be",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1"],
        ("step_1/stage_", ".pt is not a vpipe checkpoint; delete"),
        both(
            checkpoints(1),
            both(
                recheckpoint(0, lambda _: torch.load("out/weights/stage_0.pt")),
                recheckpoint(1, lambda _: torch.load("out/weights/stage_1.pt")),
            ),
        ),
    ),
    case(
        "--resume from a checkpoint of an older vpipe",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1"],
        "step_1/stage_0.pt was written by an older vpipe (schema_version None, this vpipe's is "
        f"{checkpoint.SCHEMA_VERSION}); start again without --resume",
        both(
            checkpoints(1),
            recheckpoint(
                0, lambda saved: {k: v for k, v in saved.items() if k != "schema_version"}
            ),
        ),
    ),
    case(
        "--resume from a checkpoint written before replicas had parts of their own",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1"],
        "step_1/stage_1.pt was written by an older vpipe (schema_version 1, this vpipe's is "
        f"{checkpoint.SCHEMA_VERSION}); start again without --resume",
        both(checkpoints(1), recheckpoint(1, lambda saved: {**saved, "schema_version": 1})),
    ),
    case(
        "--resume from a checkpoint of a newer vpipe",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1"],
        "step_1/stage_1.pt was written by a newer vpipe (schema_version 99, this vpipe's is",
        both(checkpoints(1), recheckpoint(1, lambda saved: {**saved, "schema_version": 99})),
    ),
    case(
        "--resume from a checkpoint with a field missing",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1"],
        "step_1/stage_0.pt: not a valid vpipe checkpoint: stage: missing field skipped; delete "
        "out/run/checkpoints/step_1 to resume from the step before",
        both(
            checkpoints(1),
            recheckpoint(
                0,
                lambda saved: {
                    **saved,
                    "stage": {k: v for k, v in saved["stage"].items() if k != "skipped"},
                },
            ),
        ),
    ),
    case(
        "--resume with another optimizer",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1", "--optimizer", "adam"],
        ("step_1/stage_", ".pt was written with --optimizer sgd; resume with it"),
        checkpoints(1),
    ),
    case(
        "checkpoints of a different plan",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1"],
        ("step_1/stage_", ".pt belongs to another plan"),
        checkpoints(1, plan_sha256="0" * 64),
    ),
    case(
        "--checkpoint-dir names a file",
        [PIPELINE, *STEP, "--checkpoint-every", "1", "--checkpoint-dir", PLAN],
        f"{PLAN} is a file, not a folder for checkpoints: choose another --checkpoint-dir",
    ),
    case(
        "RANK left in the environment beyond WORLD_SIZE",
        [PIPELINE, *STEP],
        "RANK 3 is not below WORLD_SIZE 2: torchrun or slurm variables left in the environment",
        env(RANK="3", WORLD_SIZE="2"),
    ),
    case(
        "a pipeline's batch size written as text",
        [PIPELINE, *STEP],
        "out/pipeline.yaml: not a valid pipeline file: batch_size: expected a whole number, "
        "got '4' (str); regenerate it with vpipe-gen",
        edit(PIPELINE, r"^batch_size: 4$", "batch_size: '4'"),
    ),
    case(
        "a pipeline with zero micro-batches",
        [PIPELINE, *STEP],
        "microbatches: 0 is below 1",
        edit(PIPELINE, r"^microbatches: 1$", "microbatches: 0"),
    ),
    case(
        "a pipeline tensor shape with a float",
        [PIPELINE, *STEP],
        "stages[0].inputs[0].shape[1]: expected a whole number, got 64.5 (float)",
        edit(PIPELINE, r"shape: \[4, 64\]", "shape: [4, 64.5]"),
    ),
    case(
        "a pipeline of an unknown schedule",
        [PIPELINE, *STEP],
        "schedule 'zigzag' is not one of asp, 1f1b, gpipe",
        edit(PIPELINE, r"^schedule: asp$", "schedule: zigzag"),
    ),
    case(
        "a pipeline stage with an unknown field",
        [PIPELINE, *STEP],
        "stages[0]: unknown field colour",
        edit(PIPELINE, r"^(- index: 0)$", r"\1\n  colour: red"),
    ),
    case(
        "a model file changed since it was profiled",
        [TIED_OUT + "/pipeline.yaml", *STEP],
        "tied.py changed since it was profiled (sha256 differs); re-run vpipe-profile",
        edit("tied.py", r"\Z", "# edited\n"),
    ),
    case(
        "out/run in use by another run",
        [PIPELINE, *STEP],
        ("out/run is in use by vpipe-train pid", "one run at a time per out/"),
        LIVE_LOCK,
    ),
    case("missing pipeline.yaml", ["out/no.yaml", *STEP], "cannot read pipeline out/no.yaml"),
    case(
        "pipeline.yaml of another schema version",
        [PIPELINE, *STEP],
        f"schema_version 99 is not {pipeline_schema.SCHEMA_VERSION}; regenerate it with this vpipe",
        edit(PIPELINE, r"^schema_version: \d+$", "schema_version: 99"),
    ),
    case(
        "a plan given as the pipeline", [PLAN, *STEP], "plan2.yaml is a plan, not a pipeline file"
    ),
    case(
        "unknown config key",
        RUN_CONFIG,
        "run.yml: unknown setting learning_rate; known: ",
        write("run.yml", "learning_rate: 0.1\n"),
    ),
    case(
        "config that is no mapping",
        RUN_CONFIG,
        "run.yml: a run config is a mapping",
        write("run.yml", "- lr\n"),
    ),
    case(
        "config value of the wrong kind",
        RUN_CONFIG,
        "run.yml: steps 'many': must be a whole number of at least 1",
        write("run.yml", "steps: many\n"),
    ),
    case(
        "config schedule unknown",
        RUN_CONFIG,
        "run.yml: schedule 'fast': use one of asp, 1f1b, gpipe",
        write("run.yml", "schedule: fast\n"),
    ),
    case("missing config", RUN_CONFIG, "cannot read run config run.yml"),
    case("--steps 0", [PIPELINE, "--steps", "0"], "--steps 0: must be a whole number"),
    case("--steps not a number", [PIPELINE, "--steps", "x"], "--steps: invalid int value: 'x'"),
    case("--steps and --epochs", [PIPELINE, *STEP, "--epochs", "1"], "not allowed with argument"),
    case("--lr 0", [PIPELINE, "--lr", "0"], "--lr 0.0: must be a number above 0"),
    case("negative --lr", [PIPELINE, "--lr=-0.1"], "--lr -0.1: must be a number above 0"),
    case(
        "unknown --lr-schedule",
        [PIPELINE, "--lr-schedule", "step"],
        "argument --lr-schedule: invalid choice: 'step'",
    ),
    case(
        "config lr_schedule unknown",
        RUN_CONFIG,
        "run.yml: lr_schedule 'step': use one of constant, linear, cosine",
        write("run.yml", "lr_schedule: step\n"),
    ),
    case(
        "warm-up as long as the run",
        [PIPELINE, "--steps", "5", "--warmup-steps", "5"],
        "--warmup-steps 5: must be fewer than the run's 5 steps",
    ),
    case(
        "warm-up longer than the default run",
        [PIPELINE, "--warmup-steps", "50"],
        "--warmup-steps 50: must be fewer than the run's 10 steps",
    ),
    case(
        "--min-lr above --lr",
        [PIPELINE, "--optimizer", "adamw", "--min-lr", "0.01"],
        "--min-lr 0.01: must be at most --lr (0.001)",
    ),
    case("--clip-grad-norm 0", [PIPELINE, "--clip-grad-norm", "0"], "--clip-grad-norm 0.0: must"),
    case(
        "unknown optimizer in pipeline.yaml",
        [PIPELINE, *STEP],
        f"{PIPELINE}: optimizer 'lamb' is not one of sgd, momentum, adam, adamw; regenerate",
        edit(PIPELINE, r"^optimizer: \w+$", "optimizer: lamb"),
    ),
    case("--threads -1", [PIPELINE, "--threads", "-1"], "--threads -1: must be a whole number"),
    case("--print-every 0", [PIPELINE, "--print-every", "0"], "--print-every 0: must be a whole"),
    case("--timeout-s 0", [PIPELINE, "--timeout-s", "0"], "--timeout-s 0.0: must be a number"),
    case("--checkpoint-every -1", [PIPELINE, "--checkpoint-every", "-1"], "--checkpoint-every -1"),
    case(
        "--epochs without EPOCH_SAMPLES",
        [PIPELINE, "--epochs", "1"],
        "defines no EPOCH_SAMPLES (samples per epoch); define it, or give --steps",
    ),
    case(
        "--report before any run",
        [PIPELINE, "--report"],
        "out/run holds no run to report; train first",
    ),
    case(
        "fewer processes than stages under torchrun",
        [PIPELINE, *STEP],
        "this pipeline has 2 stages and runs as 2 processes, one per stage; 1 was started",
        env(RANK="0", WORLD_SIZE="1"),
    ),
    case(
        "--resume with no checkpoint",
        [PIPELINE, "--resume", *STEP],
        "--resume: out/run/checkpoints holds no checkpoint that every stage finished",
    ),
    case(
        "--resume under another --schedule (the note of a run that starts is not printed)",
        [PIPELINE, "--resume", "--steps", "2", "--schedule", "1f1b"],
        "out/run/checkpoints/step_1/stage_0.pt was written under --schedule asp; resume with it",
        checkpoints(1),
    ),
    case(
        "--resume with an emptied metrics.csv",
        [PIPELINE, "--resume", "--steps", "2"],
        "out/run/metrics.csv: not vpipe-train's metrics (first line: 'empty'",
        both(checkpoints(1), write("out/run/metrics.csv", "")),
    ),
    case(
        "--report on a run whose settings.yaml an older vpipe wrote",
        [PIPELINE, "--report"],
        f"out/run/settings.yaml: schema_version None is not {settings.SCHEMA_VERSION}; train "
        "again to write it: vpipe-train out/pipeline.yaml",
        both(trained, edit("out/run/settings.yaml", r"^schema_version: \d+\n", "")),
    ),
    case(
        "--report on a run whose settings.yaml predates --bind-cores (version 2)",
        [PIPELINE, "--report"],
        f"out/run/settings.yaml: schema_version 2 is not {settings.SCHEMA_VERSION}; train again",
        both(
            trained,
            both(
                edit("out/run/settings.yaml", r"^schema_version: \d+$", "schema_version: 2"),
                edit("out/run/settings.yaml", r"^bind_cores: false\n", ""),
            ),
        ),
    ),
    case(
        "--report on a run whose settings.yaml is damaged",
        [PIPELINE, "--report"],
        "out/run/settings.yaml: not a valid run settings file: steps: 0 is below 1; train again",
        both(trained, edit("out/run/settings.yaml", r"^steps: 1$", "steps: 0")),
    ),
    case(
        "the run's settings given for the pipeline",
        ["out/run/settings.yaml", *STEP],
        "out/run/settings.yaml is a run settings file, not a pipeline file: give the pipeline file",
        trained,
    ),
    case(
        "--report with an emptied events file",
        [PIPELINE, "--report"],
        "out/run/events_stage1.csv: not vpipe-train's events (first line: 'empty', expected "
        "'action,microbatch,start_s,end_s,wait_s,cpu_s,main_s'); vpipe-train writes it anew",
        both(trained, write("out/run/events_stage1.csv", "")),
    ),
    case(
        "--report with a damaged events row",
        [PIPELINE, "--report"],
        "out/run/events_stage0.csv: a row is damaged; vpipe-train writes it anew: train again",
        both(trained, edit("out/run/events_stage0.csv", r"\Z", "F,9,soon\n")),
    ),
    case(
        "--report with an emptied metrics.csv",
        [PIPELINE, "--report"],
        ("out/run/metrics.csv: not vpipe-train's metrics", "re-run the training"),
        both(trained, write("out/run/metrics.csv", "")),
    ),
    case(
        "--report with a damaged last row of metrics.csv",
        [PIPELINE, "--report"],
        "out/run/metrics.csv: its last row '2,0.5,fast' is damaged",
        both(trained, edit("out/run/metrics.csv", r"\Z", "2,0.5,fast\n")),
    ),
    case(
        "--resume with nothing left to run",
        [PIPELINE, "--resume", "--steps", "2"],
        "after step 2, and --steps is 2: nothing is left to run; raise --steps",
        checkpoints(2),
    ),
    case(
        "new run into an earlier run's checkpoints",
        [PIPELINE, *STEP, "--checkpoint-every", "1"],
        "holds checkpoints of an earlier run: --resume to continue it",
        checkpoints(1),
    ),
]

# Errors only a stage can see: the local launcher starts both stage processes (seconds each).
TRAIN_LAUNCHED = [
    case(
        "stage file that no longer loads",
        [PIPELINE, *STEP],
        "stage 1: out/stage_1.py cannot be loaded",
        write("out/stage_1.py", "import no_such_module\n"),
    ),
    case(
        "stage edited to return another shape",
        [PIPELINE, *STEP],
        "stage 0: stage 0 returns layers_2 as (4, 1) float32; pipeline.yaml expects (4, 128)",
        edit("out/stage_0.py", r"return \((\w+),\)", r"return (\1[:, :1],)"),
    ),
    case(
        "stage edited to use an undefined name (the edit's error, not vpipe's bug)",
        [PIPELINE, *STEP],
        (
            "stage 0: out/stage_0.py line ",
            ": NameError: name 'scale' is not defined (the file was edited since vpipe-gen",
        ),
        edit("out/stage_0.py", r"return \((\w+),\)", r"return (\1 * scale,)"),
    ),
    case(
        "a truncated weights file",
        [PIPELINE, *STEP],
        ("stage 1: out/weights/stage_1.pt cannot be read, it is damaged", "vpipe-gen"),
        truncate("out/weights/stage_1.pt"),
    ),
    case(
        "a weights file of another shape",
        [PIPELINE, *STEP],
        ("stage 0: out/weights/stage_0.pt: layers.0.weight is ((3, 3), torch.float32)",),
        resave("out/weights/stage_0.pt", "layers.0.weight", torch.zeros(3, 3)),
    ),
    case(
        "pipeline.yaml names a stage file that is not Python",
        [PIPELINE, *STEP],
        "stage 1: out/stage_1.txt is not a Python file; regenerate it with vpipe-gen",
        both(
            write("out/stage_1.txt", "x = 1\n"),
            edit(PIPELINE, r"stage_1.py:Stage1", "stage_1.txt:Stage1"),
        ),
    ),
    case(
        "pipeline.yaml names a class its stage file lacks",
        [PIPELINE, *STEP],
        "stage 1: out/stage_1.py defines no class Stage9 (it has Stage1); regenerate it",
        edit(PIPELINE, r"stage_1.py:Stage1", "stage_1.py:Stage9"),
    ),
    case(
        "a checkpoint whose weights have another shape",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1"],
        (
            "stage 1: out/run/checkpoints/step_1/stage_1.pt (weights): layers.",
            "is ((3, 3), torch.float32); the stage expects",
        ),
        both(
            checkpoints(1),
            recheckpoint(
                1,
                lambda saved: {
                    **saved,
                    "stage": {
                        **saved["stage"],
                        "weights": {name: torch.zeros(3, 3) for name in saved["stage"]["weights"]},
                    },
                },
            ),
        ),
    ),
    case(
        "a checkpoint with optimizer state of other weights",
        [PIPELINE, "--resume", "--steps", "2", "--threads", "1"],
        "stage 0: out/run/checkpoints/step_1/stage_0.pt: its optimizer state is not for this "
        "stage's weights",
        both(
            checkpoints(1),
            recheckpoint(0, lambda saved: {**saved, "optimizer": {"head.w": {}}}),
        ),
    ),
]

COMMANDS = {
    "vpipe-profile": profile_main,
    "vpipe-plan": plan_main,
    "vpipe-gen": generate_main,
    "vpipe-train": train_main,
}


def _files(folder: Path) -> dict[Path, bytes]:
    return {
        p.relative_to(folder): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> Callable[..., None]:
    """Run a command in a fresh copy of `start` (or an empty folder) after `build`; check the
    one clear line, exit status 2, and that no file was written (`launched`: that no file that
    was there before changed, and that the line names a stage and its log, a traceback)."""

    def run(
        command: str,
        build: Build,
        argv: list,
        expected: str | tuple[str, ...],
        start: Path | None = None,
        launched: bool = False,
    ) -> None:
        work = tmp_path / "case"
        if start:
            shutil.copytree(start, work)
        else:
            work.mkdir()
        monkeypatch.chdir(work)
        build(monkeypatch)
        before = _files(work)
        capfd.readouterr()  # what building printed
        code = COMMANDS[command]([str(a) for a in argv])
        err = capfd.readouterr().err
        lines, prefix = err.splitlines(), f"{command}: error: "
        assert code == 2, err
        assert len(lines) == 1 and err.endswith("\n") and err.startswith(prefix), err
        if launched:
            log = re.fullmatch(rf"{prefix}stage \d: .* \(full traceback: (.+)\)", lines[0])
            assert log and "Traceback" in Path(log[1]).read_text(), err
        for part in expected if isinstance(expected, tuple) else (expected,):
            assert part in err, err
        after = _files(work)
        if launched:
            assert {p: after.get(p) for p in before} == before
        else:
            assert after == before

    return run


@pytest.mark.parametrize("build, argv, expected", PROFILER)
def test_profile(build, argv, expected, fails_cleanly):
    fails_cleanly("vpipe-profile", build, [*argv, "-q"], expected)


@pytest.mark.parametrize("build, argv, expected", PLANNER)
def test_plan(build, argv, expected, made, fails_cleanly):
    fails_cleanly("vpipe-plan", build, [*argv, "-q"], expected, made)


@pytest.mark.parametrize("build, argv, expected", CODEGEN)
def test_gen(build, argv, expected, made, fails_cleanly):
    fails_cleanly("vpipe-gen", build, [*argv, "-q"], expected, made)


@pytest.mark.parametrize("build, argv, expected", TRAIN)
def test_train(build, argv, expected, made, fails_cleanly):
    fails_cleanly("vpipe-train", build, argv, expected, made)


@pytest.mark.parametrize("build, argv, expected", TRAIN_LAUNCHED)
def test_train_launched(build, argv, expected, made, fails_cleanly):
    fails_cleanly("vpipe-train", build, argv, expected, made, launched=True)
