"""Progress: one line per finished phase with its time when standard error is not a
terminal, a "starting…" line on a terminal while a command loads torch, and the model's
own steps (the CNN's epochs) reported."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner

from auditor.cli import cli
from auditor.cli import group as group_module
from auditor.cli.progress import PhaseProgress
from auditor.models.cnn import CNN, EPOCHS_PHASE

LINE = re.compile(r"^(?P<phase>[a-z: ]+): (?:(?P<steps>[\d,]+) in )?(?P<seconds>\d+\.\d)s$")


def _phase_lines(stderr: str) -> list[tuple[str, str | None]]:
    found = []
    for line in stderr.splitlines():
        match = LINE.match(line)
        if match:
            found.append((match["phase"], match["steps"]))
    return found


def test_a_scan_off_a_terminal_prints_one_line_per_phase_with_its_time(tmp_path):
    db = str(tmp_path / "a.db")
    result = CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--db", db])
    assert result.exit_code == 0, result.output
    assert _phase_lines(result.stderr) == [
        ("load data", None),
        ("fit", None),
        ("gradients", None),
        ("solve", None),
        ("pair scores", None),  # toy-linear has one test point: a phase of one step
        ("ranking refits", "3"),  # two concentration refits (settled), then the last
        ("rank and flag", None),
    ]
    assert result.stdout.strip() == "1"  # standard output carries the run id alone
    assert result.stderr.splitlines()[-1].startswith("run 1: 20 pair scores")


def test_the_report_command_reports_reading_and_rendering(tmp_path):
    db = str(tmp_path / "a.db")
    assert CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--db", db]).exit_code == 0
    out = tmp_path / "r.html"
    result = CliRunner().invoke(cli, ["report", "--db", db, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _phase_lines(result.stderr) == [("read the run", None), ("render", None)]


def test_a_phase_run_again_prints_again_and_quiet_prints_nothing(capsys):
    with PhaseProgress() as progress:
        for _ in range(2):  # the next seed of evaluate scans again
            progress("fit", 0, 0)
            progress("fit", 1, 1)
            progress("fit", 1, 1)  # reported done twice: one line
    assert [p for p, _ in _phase_lines(capsys.readouterr().err)] == ["fit", "fit"]
    with PhaseProgress(quiet=True) as progress:
        progress("fit", 0, 0)
        progress("fit", 1, 1)
    assert capsys.readouterr().err == ""


def test_on_a_terminal_a_command_that_loads_torch_says_it_is_starting_then_erases_it(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(group_module, "isatty", lambda stream: True)
    db = str(tmp_path / "a.db")
    result = CliRunner().invoke(cli, ["scan", "--train", "nowhere.csv", "--db", db])
    assert result.exit_code != 0
    # the line comes first and is erased (carriage return, clear line) before the error
    assert result.stderr.startswith("auditor scan: starting…\r\x1b[K")
    assert result.stderr.count("Error:") == 1
    help_text = CliRunner().invoke(cli, ["scan", "--help"])
    assert "starting" not in help_text.output
    reading = CliRunner().invoke(cli, ["runs", "--db", db])
    assert "starting" not in reading.output


def test_the_cnn_reports_its_epochs():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 16 * 16, generator=gen)
    y = torch.arange(40) % 2
    model = CNN((1, 16, 16), 2, epochs=3)
    seen: list[tuple[str, int, int]] = []
    model.progress = lambda phase, done, total: seen.append((phase, done, total))
    model.pretrain(x, y, 0.01, seed=0)
    assert seen == [(EPOCHS_PHASE, e, 3) for e in range(4)]


@pytest.mark.parametrize("name", ["apply", "evaluate", "scan"])
def test_the_commands_that_load_torch_are_marked(name):
    assert group_module.COMMANDS[name].loads_torch
    assert not any(
        c.loads_torch
        for n, c in group_module.COMMANDS.items()
        if n not in ("apply", "evaluate", "scan")
    )


@pytest.mark.parametrize("squaring", [True, False])
def test_a_lissa_solve_reports_its_steps_towards_an_estimated_total(squaring):
    from auditor.config import SolverArgs
    from auditor.influence.hessian import HessianOperator
    from auditor.influence.solvers.lissa import PROGRESS_PHASE, lissa_ihvp
    from auditor.models import build_model

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    model = build_model("logistic", "classification", 5, 2)
    op = HessianOperator(model, torch.zeros(6, dtype=torch.float64), x, y, 0.01)
    seen: list[tuple[str, int, int]] = []
    op.progress = lambda phase, done, total: seen.append((phase, done, total))
    v = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    args = SolverArgs(solver="lissa", tol=1e-6, squaring=squaring)
    _, diag = lissa_ihvp(op, v, args)
    unit = "doublings" if squaring else "steps"
    assert seen and {p for p, _, _ in seen} == {f"{PROGRESS_PHASE} {unit}"}
    done = [d for _, d, _ in seen]
    assert done == sorted(done) and all(d <= t for _, d, t in seen)
    assert seen[-1][1] == seen[-1][2]  # the last report: done, at the total reached
    if not squaring:
        assert seen[-1][1] == diag.iterations + 1  # the step whose residual met the tolerance
