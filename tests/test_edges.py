"""The edges stay thin: one mapping from an exception that ends a verb to its exit code (engine.exit_for), one
check lock with its unlocked fallback (runstate.check_lock), used by `migd check` and every migd-watch round."""

from __future__ import annotations

import errno
import os

import pytest

from migd import errors as E
from migd import runstate
from migd.engine import exit_for
from migd.errors import ConfigError, DriverError, LockBusy, Problem, ReadOnlyViolation, UsageError


@pytest.mark.parametrize("exc, expected", [
    (ConfigError([Problem("bad", "/etc/migd.toml", 3, "daemon.x")]), (E.EXIT_USAGE, "config_invalid")),
    (UsageError("bad --simulate"), (E.EXIT_USAGE, "usage")),
    (LockBusy("another migd holds the lock"), (E.EXIT_BUSY, "failed")),
    (ReadOnlyViolation("nvmlDeviceSetMigMode"), (E.EXIT_FAILURE, "failed")),
    (DriverError(9, "nvmlInit"), (E.EXIT_FAILURE, "failed")),
    (PermissionError(errno.EACCES, "denied", "/run/migd"), (E.EXIT_FAILURE, "failed")),
    (BrokenPipeError(), (E.EXIT_OK, "")),
    (KeyboardInterrupt(), (130, "")),
])
def test_every_exception_that_ends_a_verb_has_one_exit_code(exc, expected):
    assert exit_for(exc) == expected


def test_the_cli_exits_with_the_mapped_code(tmp_path, capsys):
    from migd import cli

    bad = tmp_path / "migd.toml"
    bad.write_text("[daemon]\nwatch_interval = 0\n")
    assert cli.main(["--config", str(bad), "validate"]) == exit_for(ConfigError([]))[0] == E.EXIT_USAGE
    assert "invalid configuration, no GPU touched:" in capsys.readouterr().err


def test_check_lock_is_shared_waits_no_longer_than_asked_and_falls_back_to_unlocked(tmp_path):
    run = str(tmp_path / "run")
    with runstate.check_lock(0, directory=run), runstate.check_lock(0, directory=run):  # checks run together
        pass
    # an apply in progress: a check cannot take the lock
    with runstate.locked(1, directory=run), pytest.raises(LockBusy), runstate.check_lock(0, directory=run):
        pass
    blocked = tmp_path / "file"
    blocked.write_text("")
    entered = []
    with runstate.check_lock(0, directory=os.path.join(str(blocked), "run")):  # no usable run dir: unlocked
        entered.append(True)
    assert entered == [True]


def test_edges_get_their_engine_lock_and_exit_codes_from_one_place_each():
    """No edge builds an Engine, takes the check lock or maps an exception to an exit code by itself."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "src" / "migd"
    for edge in ("cli.py", "boot.py", "watch.py"):
        text = (src / edge).read_text()
        assert not re.search(r"\bEngine\(", text), f"{edge} builds an Engine: use Site.engine"
        assert "shared=True" not in text, f"{edge} takes the shared lock itself: use runstate.check_lock"
        assert not re.search(r"except [A-Za-z.]*Error[^\n]*:\n\s+return (130|E\.EXIT_)", text), edge
    assert "return 130" not in (src / "cli.py").read_text()
