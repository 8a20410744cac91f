"""The README opens with the two set-up commands: the main job, and the tests that .ci/run runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _first_block_commands() -> dict[str, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README.md has no fenced command block"
    commands, label = {}, None
    for line in block.group(1).splitlines():
        m = re.match(r"#\s*(\d+)\.", line)
        if m:
            label = m.group(1)
        elif line.strip() and label is not None and label not in commands:
            commands[label] = line.strip()
    return commands


def _ci_commands() -> list[str]:
    lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_readme_starts_with_two_numbered_commands():
    commands = _first_block_commands()
    assert set(commands) == {"1", "2"}


def test_the_first_command_runs_the_main_job():
    first = _first_block_commands()["1"]
    assert "distbp-train" in first
    assert first.startswith("python3 -m venv .venv")
    assert "[digits]" in first or "[dev]" in first  # the default data set's extra is installed


def test_the_test_command_is_what_ci_runs():
    second = _first_block_commands()["2"]
    assert "pytest" in second
    assert second in _ci_commands()
    assert _ci_commands()[-1] == second  # the last thing CI does, so its exit code is CI's


def test_ci_script_is_strict_and_executable():
    run = REPO / ".ci" / "run"
    text = run.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert run.stat().st_mode & 0o111
