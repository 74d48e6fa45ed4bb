"""How a reload reads the configuration file (`cli.read_settled`, issue 16, item 3): only
a regular file, never blocking on a FIFO, and only once it has been still a moment."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from bridge.cli import read_settled
from bridge.errors import ConfigError


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_file_left_alone_is_read_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("version: 1\n")
    _age(path, 5)
    started = time.monotonic()
    assert read_settled(str(path), settle=2.0) == b"version: 1\n"
    assert time.monotonic() - started < 1.0


def test_a_file_changed_a_moment_ago_is_read_once_still(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("version: 1\n")
    started = time.monotonic()
    assert read_settled(str(path), settle=0.3) == b"version: 1\n"
    assert time.monotonic() - started >= 0.2


def test_the_rest_of_a_file_being_written_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("version: 1\n")

    def finish() -> None:
        time.sleep(0.15)
        with path.open("a") as fh:
            fh.write("hosts: []\n")

    writer = threading.Thread(target=finish)
    writer.start()
    try:
        assert read_settled(str(path), settle=0.3) == b"version: 1\nhosts: []\n"
    finally:
        writer.join()


@pytest.mark.parametrize(
    ("make", "kind"),
    [(os.mkfifo, "a FIFO (named pipe)"), (os.mkdir, "a directory")],
)
def test_only_a_regular_file_is_read(tmp_path: Path, make, kind: str) -> None:
    path = tmp_path / "bridge.yaml"
    make(path)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        read_settled(str(path))
    assert time.monotonic() - started < 1.0  # a FIFO without a writer does not block
    (problem,) = caught.value.problems
    assert f"is {kind}, not a regular file" in problem.message


def test_a_file_that_keeps_changing_is_given_up(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("version: 1\n")
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.wait(0.05):
            path.touch()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        with pytest.raises(ConfigError, match=r"kept changing for 0\.6 s"):
            read_settled(str(path), settle=0.3, give_up=0.6)
    finally:
        stop.set()
        writer.join()


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file: No such file"):
        read_settled(str(tmp_path / "gone.yaml"))
