"""Shared by the deploy tests: the release artifacts, built once per session."""

from __future__ import annotations

import pytest
from release import Dist, build


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    return build(tmp_path_factory.mktemp("dist"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # With pytest-xdist (`make test` runs two workers) every deploy test runs on one
    # worker: `python -m build` writes into the repository, so two builds at once race.
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.xdist_group("deploy"))
