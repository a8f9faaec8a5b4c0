"""The commands that only read a run never load torch (issue 15, must 6): ``--version``,
``--help``, ``runs``, ``show``, ``export``, ``compare`` and ``report`` (with thumbnails)."""

import subprocess
import sys

from click.testing import CliRunner

from auditor.cli import cli
from auditor.cli.group import COMMANDS, all_commands

READER = """
import sys
from click.testing import CliRunner
from auditor.cli import cli

db, out = sys.argv[1], sys.argv[2]
runner = CliRunner()
calls = [
    (["--version"], 0),
    (["--help"], 0),
    (["runs", "--db", db], 0),
    (["show", "1", "--test-index", "0", "--db", db], 0),
    (["export", "1", "--format", "csv", "--db", db], 0),
    (["compare", "1", "1", "--db", db], 0),
    (["report", "1", "--out", out, "--db", db], 0),
    (["export", "99", "--db", db], 1),
]
for args, status in calls:
    result = runner.invoke(cli, args)
    assert result.exit_code == status, (args, result.output)
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))))
"""


def test_the_commands_that_only_read_never_load_torch(tmp_path, mnist_dir):
    db, out = tmp_path / "a.db", tmp_path / "report.html"
    args = ["scan", "--train", str(mnist_dir), "--classes", "1,7", "--test-split", "0.2"]
    result = CliRunner().invoke(cli, [*args, "--solver", "exact", "--db", str(db)])
    assert result.exit_code == 0, result.output
    done = subprocess.run(
        [sys.executable, "-c", READER, str(db), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"loaded: {done.stdout.strip()[:300]}"
    assert out.stat().st_size > 10_000 and b"data:image/png;base64," in out.read_bytes()


def test_the_listing_shows_each_commands_own_summary():
    commands = all_commands()
    assert sorted(commands) == sorted(COMMANDS)
    for name, command in commands.items():
        assert COMMANDS[name].short_help == command.get_short_help_str(limit=1000), name
    listing = CliRunner().invoke(cli, ["--help"]).output
    for name in COMMANDS:
        assert f"  {name} " in listing
