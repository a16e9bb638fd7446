"""Typed rows in a run's CSV files: what is appended reads back as the same records, and a
file of another layout is refused rather than misread."""

import pytest

from vpipe.common.errors import VpipeError
from vpipe.runtime.layoutlog import AdaptDecision, Moved, SwitchRecord
from vpipe.runtime.rowlog import append_row, read_rows_as


def test_records_read_back_as_written(tmp_path):
    path = tmp_path / "switches.csv"
    assert read_rows_as(path, SwitchRecord) == ()  # no file: no switch
    first = SwitchRecord.of(15, 12.5, 0.04, [Moved(0, 1, 3), Moved(1, 0, 0)], 1536, tmp_path)
    second = SwitchRecord.of(30, 99.25, 0.02, [], 0, tmp_path)
    append_row(path, first)
    append_row(path, second)
    assert read_rows_as(path, SwitchRecord) == (first, second)
    assert first.line() == "step 15: moved 3 nodes from stage 0 to stage 1 (1.5 KiB) in 40 ms"
    assert second.line() == "step 30: switched plans; no node changed stage"


def test_another_layout_is_refused(tmp_path):
    path = tmp_path / "adapt.csv"
    path.write_text("step,ratios\n10,1 2\n")
    with pytest.raises(VpipeError, match="its header is not step,measured_ms"):
        read_rows_as(path, AdaptDecision)
    decision = AdaptDecision(
        step=10,
        measured_ms="1 2",
        period_ms=2.5,
        ratios="1 2",
        speeds="",
        current_ms=2.0,
        planned_ms=2.0,
        switched=True,
        reason="why",
        seconds=0.5,
    )
    path.unlink()
    append_row(path, decision)
    path.write_text(path.read_text().replace("True", "yes"))
    with pytest.raises(VpipeError, match="'yes' is not a bool"):
        read_rows_as(path, AdaptDecision)
