"""The scan options are declared once, on the settings fields of auditor.config: the Click
options, their sections in --help, scan_config, the rescan's argv and the docs' tables
all come from there."""

import os
import runpy
import sys
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.cli.evaluate import evaluate
from auditor.cli.group import all_commands
from auditor.cli.help import BEGIN, END, region, splice
from auditor.cli.options import options_markdown, scan_argv, scan_config, scan_options
from auditor.config import CLI, SECTIONS, CliCopy, CliOption, DataArgs, ScanConfig, SolverArgs
from auditor.errors import ConfigError
from auditor.influence import solvers
from auditor.influence.solvers import SOLVERS, check_solver
from auditor.models import MODEL_NAMES
from auditor.pipeline.scan import scan as run_scan
from auditor.store import open_db, runs

ROOT = Path(__file__).resolve().parents[2]
scan = all_commands()["scan"]
#: Options of scan that are not settings of a ScanConfig.
NOT_SETTINGS = {"--resume", "--db", "--help"}


def declared() -> list[tuple[str | None, object, CliOption | CliCopy]]:
    """``(group, field, declaration)`` of every settings field with cli metadata."""
    out = []
    hints = typing.get_type_hints(ScanConfig)
    for f in fields(ScanConfig):
        if is_dataclass(hints[f.name]):
            out += [
                (f.name, g, g.metadata[CLI]) for g in fields(hints[f.name]) if CLI in g.metadata
            ]
        elif CLI in f.metadata:
            out.append((None, f, f.metadata[CLI]))
    return out


OPTIONS = {d.flag: (group, f, d) for group, f, d in declared() if isinstance(d, CliOption)}


def params(command: click.Command) -> dict[str, click.Option]:
    return {p.opts[0]: p for p in command.params if isinstance(p, click.Option)}


def parse(*argv: str, command: click.Command = scan) -> ScanConfig:
    return scan_config(command.make_context(command.name, list(argv)).params)


def test_every_declared_field_is_an_option_of_scan_and_nothing_else_is():
    assert set(params(scan)) - NOT_SETTINGS == set(OPTIONS)
    assert set(params(evaluate)) >= set(OPTIONS) - {"--seed"}
    assert "--seed" not in params(evaluate)
    copies = [d.flag for _, _, d in declared() if isinstance(d, CliCopy)]
    assert copies == ["--seed"]  # the solver's copy of the data's --seed


def test_fields_without_an_option_have_no_cli_metadata():
    hints = typing.get_type_hints(ScanConfig)
    bare = {
        f"{g.name}.{h.name}"
        for g in fields(ScanConfig)
        if is_dataclass(hints[g.name])
        for h in fields(hints[g.name])
        if CLI not in h.metadata
    }
    assert bare == {
        "model.max_iter",
        "model.grad_tol",
        "solver.max_iter",
        "solver.squaring",
        "rule.outlier_support_z",
        "rule.rounds",
        "rule.influence_scale",
    }


@pytest.mark.parametrize("flag", sorted(OPTIONS))
def test_each_options_default_help_and_section_come_from_its_field(flag):
    _group, f, option = OPTIONS[flag]
    param = params(scan)[flag]
    assert param.help == option.help
    assert param.section == option.section
    assert scan.make_context("scan", []).params[param.name] == f.default
    shown = option.default_text if option.default_text is not None else f.default
    assert bool(param.show_default) == (shown is not None)
    if shown is not None:
        assert param.default == shown


def test_the_defaults_build_the_dataclasses_defaults():
    assert parse("--train", "x.csv") == ScanConfig(DataArgs(train="x.csv"))
    assert parse("--train", "x.csv", command=evaluate) == ScanConfig(DataArgs(train="x.csv"))


def sections_of(output: str) -> dict[str, str]:
    """``--help``'s option sections: heading -> the text under it."""
    out, title = {}, None
    for line in output.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            out[title] = ""
        elif title is not None:
            out[title] += line + "\n"
    return out


@pytest.mark.parametrize("command", [scan, evaluate], ids=["scan", "evaluate"])
def test_help_lists_each_option_with_its_fields_help_under_its_section(command):
    output = CliRunner().invoke(cli, [command.name, "--help"], terminal_width=80).output
    sections = sections_of(output)
    titles = [s.capitalize() for s in SECTIONS]
    assert list(sections) == [*titles, "Other options"]
    squash = {title: "".join(text.split()) for title, text in sections.items()}
    for flag in params(command):
        if flag in NOT_SETTINGS or flag not in OPTIONS:
            assert flag in sections["Other options"]
            continue
        option = OPTIONS[flag][2]
        under = option.section.capitalize()
        assert f"  {flag} " in sections[under], flag
        if option.help:
            assert "".join(option.help.split()) in squash[under], flag
        for other in titles:
            if other != under:
                assert f"  {flag} " not in sections[other]


def test_the_sections_keep_one_column_for_the_help_texts():
    output = CliRunner().invoke(cli, ["scan", "--help"], terminal_width=80).output
    assert "  --seed INTEGER                  Seeds the split" in output
    assert "  --device TEXT                   cpu or cuda." in output
    assert "  --db TEXT                       SQLite file" in output


def test_solver_and_model_choices_come_from_the_registries():
    assert list(params(scan)["--solver"].type.choices) == ["auto", *SOLVERS]
    assert SolverArgs().solver == "auto"
    assert list(params(scan)["--model"].type.choices) == list(MODEL_NAMES)


ROUND_TRIPS = [
    [],
    ["--test", "y.csv"],
    ["--test-split", "0.3", "--seed", "7"],
    ["--classes", " b, a ,c", "--normalize", "none", "--resize", "28X21"],
    ["--model", "cnn", "--params", "all", "--epochs", "1", "--dtype", "float64"],
    ["--model", "logistic", "--weight-decay", "0", "--hidden", "3"],
    ["--solver", "exact", "--self-influence", "same", "--tol", "1e-09"],
    ["--solver", "lissa", "--scale", "2.5", "--depth", "10", "--repeats", "3"],
    ["--batch-size", "64", "--damping", "0.001"],
    ["--outlier-z", "auto", "--mislabel-z", "4.5", "--trim", "0"],
    ["--outlier-z", "3", "--chunk", "1", "--device", "cpu"],
    ["--download", "mnist", "--download-root", "elsewhere", "--test-split", "0.2"],
]


@pytest.mark.parametrize("argv", ROUND_TRIPS, ids=lambda a: " ".join(a) or "defaults")
def test_scan_argv_inverts_scan_config(argv):
    config = parse("--train", "x.csv", *argv)
    test = config.data.test
    again = scan_argv(config, "x.csv", test)
    assert again[:4] == ["auditor", "scan", "--train", "x.csv"]
    repeated = parse(*again[2:])
    where = {"test_split", "download", "download_root"}  # the rescan's data is given apart
    assert repeated.model == config.model
    assert repeated.solver == config.solver
    assert repeated.rule == config.rule
    assert (repeated.device, repeated.score_chunk) == (config.device, config.score_chunk)
    keep = {k: v for k, v in vars(config.data).items() if k not in where}
    assert {k: v for k, v in vars(repeated.data).items() if k not in where} == keep


def test_the_rescan_names_the_solver_always_and_other_options_only_off_their_default():
    assert scan_argv(parse("--train", "x.csv"), "x.csv", None) == [
        "auditor",
        "scan",
        "--train",
        "x.csv",
        "--solver",
        "auto",
    ]
    argv = scan_argv(parse("--train", "x", "--classes", "1,7", "--resize", "8x9"), "x", None)
    assert argv[4:] == ["--classes", "1,7", "--resize", "8x9", "--solver", "auto"]


def test_seed_sets_the_datas_and_the_solvers_seed_and_the_rescan_repeats_it_once():
    config = parse("--train", "x.csv", "--seed", "11")
    assert (config.data.seed, config.solver.seed) == (11, 11)
    argv = scan_argv(config, "x.csv", None)
    assert argv.count("--seed") == 1 and argv[argv.index("--seed") + 1] == "11"
    evaluated = parse("--train", "x.csv", command=evaluate)
    assert (evaluated.data.seed, evaluated.solver.seed) == (0, 0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--classes", "7", "give at least two comma-separated classes, e.g. 1,7"),
        ("--resize", "big", "expected HxW such as 28x28, got 'big'"),
        ("--resize", "0x4", "sizes must be positive, got '0x4'"),
        ("--outlier-z", "high", "'high' is neither auto nor a number"),
    ],
)
def test_a_parser_error_is_a_usage_error_of_its_option(option, value, message):
    result = CliRunner().invoke(cli, ["scan", "--train", "x.csv", option, value])
    assert result.exit_code == 2
    assert option in result.output and message in result.output


def test_scan_options_without_an_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="--sead"):
        scan_options(without=("--sead",))


def test_an_unregistered_solver_fails_as_before_and_writes_nothing(tmp_path):
    message = "unknown solver 'magic'; choose auto, lissa, exact, cg or ekfac"
    config = ScanConfig(DataArgs(train="toy-linear"), solver=SolverArgs(solver="magic"))
    engine = open_db(str(tmp_path / "audit.db"))
    with pytest.raises(ConfigError) as error:
        run_scan(engine, config)
    assert str(error.value) == message
    assert [r.as_dict() for r in runs.list_runs(engine)] == []
    result = CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--solver", "magic"])
    assert result.exit_code == 2
    assert "'lissa', 'exact', 'cg'" in result.output


def test_the_solver_check_names_what_the_registry_holds(monkeypatch):
    monkeypatch.setitem(solvers.SOLVERS, "newton", solvers.SOLVERS["exact"])
    check_solver("newton")
    with pytest.raises(
        ConfigError, match=r"^unknown solver 'x'; choose auto, lissa, exact, cg, ekfac or newton$"
    ):
        check_solver("x")


def test_the_markdown_has_a_table_per_section_covering_every_option_of_scan():
    text = options_markdown()
    ctx = click.Context(scan)
    titles = [s.capitalize() for s in SECTIONS] + ["Other options"]
    assert [line[4:] for line in text.splitlines() if line.startswith("### ")] == titles
    for title in titles:
        assert f"### {title}\n| option | default | what it does |\n| --- | --- | --- |\n" in text
    assert "| `--train DATA` | | toy-linear, an idx or image folder, a .csv or .npz. |" in text
    assert "| `--seed INTEGER` | `0` | Seeds the split and sampling. |" in text
    assert "| `--normalize [unit\\|none\\|standard]` | `unit` |" in text
    for flag, param in params(scan).items():
        if flag == "--help":
            continue
        term = param.get_help_record(ctx)[0].replace("|", "\\|")
        assert f"| `{term}` |" in text, flag
    # each option under its section's heading
    blocks = dict(block.split("\n", 1) for block in text.split("### ")[1:])
    for flag, (_group, _f, option) in OPTIONS.items():
        assert f"`{flag} " in blocks[option.section.capitalize()], flag


def test_docs_usage_holds_the_generated_tables():
    usage = ROOT / "docs" / "usage.md"
    if not usage.exists():
        pytest.skip("docs/usage.md is not on this branch")
    assert region(usage.read_text(encoding="utf-8")) == options_markdown(), (
        "docs/usage.md is out of date: run scripts/docs"
    )


def test_splice_replaces_only_the_region():
    text = f"# Usage\n\nbefore\n{BEGIN}\nold\n{END}\nafter\n"
    new = splice(text, "### Data\nrows\n")
    assert new.startswith("# Usage\n\nbefore\n") and new.endswith(f"{END}\nafter\n")
    assert region(new) == "### Data\nrows\n"
    assert splice(new, "### Data\nrows\n") == new
    with pytest.raises(ValueError, match="markers"):
        region("no markers here")


def test_scripts_docs_rewrites_the_region_and_refuses_a_file_without_markers(
    tmp_path, monkeypatch, capsys
):
    script = ROOT / "scripts" / "docs"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env python3\n")
    usage = tmp_path / "usage.md"
    usage.write_text(f"# Usage\n\n{BEGIN}\nstale\n{END}\n\nmore\n")

    def docs(*args: str) -> int:  # in this process: a subprocess spends seconds importing torch
        monkeypatch.setattr(sys, "argv", [str(script), "--file", str(usage), *args])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
        return done.value.code

    assert docs("--check") == 1
    assert docs() == 0
    assert region(usage.read_text()) == options_markdown()
    assert usage.read_text().endswith(f"{END}\n\nmore\n")
    assert docs("--check") == 0
    usage.write_text("# Usage\n")
    capsys.readouterr()
    assert docs() == 1
    assert BEGIN in capsys.readouterr().err
