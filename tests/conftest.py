"""Shared test helpers: where the fixtures and the shared PipeDream profiles are."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "profiler" / "fixtures"
PIPEDREAM = REPO.parent / "shared" / "profiles" / "pipedream"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
