"""Shared by the deploy tests: the release artifacts, built once per session."""

from __future__ import annotations

import pytest
from release import Dist, build


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    return build(tmp_path_factory.mktemp("dist"))
