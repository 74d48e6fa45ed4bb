"""The command line as a new user meets it (issue 18, item 5): every option explained,
no option that is always refused, a usage error in one line and a hint."""

from __future__ import annotations

import argparse

import pytest

from bridge import cli


def _parsers() -> dict[str, argparse.ArgumentParser]:
    top = cli.build_parser()
    found = {"modbus-bridge": top}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, parser in action.choices.items():
                found[name] = parser
    return found


def test_every_command_is_listed_and_every_option_has_a_help_line() -> None:
    parsers = _parsers()
    assert set(parsers) == {"modbus-bridge", *cli.COMMANDS}
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, parser in parsers.items()
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and not (action.help and action.help.strip())
    ]
    assert missing == []


def test_serial_rtu_is_named_in_the_description() -> None:
    text = cli.build_parser().format_help()
    assert "Modbus TCP devices" not in text
    assert "serial" in text and "RTU" in text


def test_write_offers_no_count_read_does() -> None:
    parsers = _parsers()
    options = {
        name: {o for a in p._actions for o in a.option_strings} for name, p in parsers.items()
    }
    assert "--count" not in options["write"]
    assert "--count" in options["read"]
    with pytest.raises(SystemExit) as exc:
        cli.main(["write", "--host", "127.0.0.1", "--address", "0", "--count", "2", "5"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "which command? one of check, run, sim, demo, read, write, scan"),
        (["check"], "the following arguments are required: -c/--config"),
        (["run", "-c"], "argument -c/--config: expected one argument"),
        (["chek", "-c", "x"], "invalid choice: 'chek'"),
        (["read", "--host", "h", "--address", "70000"], "70000 is outside 0..65535"),
        (["demo", "--devices", "x"], "invalid int value: 'x'"),
    ],
)
def test_a_usage_error_is_one_line_and_a_hint(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 2, captured.err
    assert says in lines[0]
    assert lines[0].startswith("modbus-bridge")
    assert lines[1].startswith("Try 'modbus-bridge") and lines[1].endswith(
        "--help' for more information."
    )
    assert "usage:" not in captured.err


@pytest.mark.parametrize(
    ("value", "extra", "registers"),
    [
        ("0x1F", [], [31]),
        ("230.9", ["--scale", "0.1"], [2309]),
        ("1e3", [], [1000]),
    ],
)
def test_write_reads_its_value_as_a_plain_command_payload(
    value: str, extra: list[str], registers: list[int]
) -> None:
    """`write`'s value and a point's `set` payload share one grammar (commands.plain_value)."""
    from bridge import commission

    parser = _parsers()["write"]
    args = parser.parse_args(["--host", "127.0.0.1", "--address", "0", *extra, value])
    _, _, encoded = commission.plan_write(args)
    assert encoded == registers


def test_write_refuses_what_a_command_refuses() -> None:
    from bridge import commission

    parser = _parsers()["write"]
    args = parser.parse_args(["--host", "127.0.0.1", "--address", "0", "0b101"])
    with pytest.raises(commission.UsageError, match="expected a number"):
        commission.plan_write(args)
