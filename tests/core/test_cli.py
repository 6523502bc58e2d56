"""The `tuneserve` CLI itself: every subcommand's --help prints and exits 0."""

from __future__ import annotations

import argparse

import pytest

from tuneserve.cli import build_parser, main


def _subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def test_the_subcommands_are_the_stages() -> None:
    assert _subcommands() == sorted(
        ["train", "compare", "analyze", "export", "bench-model", "serve", "ab-report", "loadtest"]
    )


@pytest.mark.parametrize("command", [[], *([c] for c in _subcommands())])
def test_help_of_every_subcommand(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tuneserve {' '.join(command)}".rstrip()), out[:200]
    assert "--help" in out


def test_loadtest_help_shows_the_slo_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["loadtest", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "p99=100ms,fail=1% (also p50" in out
    assert "--text-column" in out and "--config" in out and "--set KEY=VALUE" in out
