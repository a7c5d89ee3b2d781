"""migd.log against a real AF_UNIX datagram socket standing in for journald."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Iterator, List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

import migd.log
from migd.log import encode_journal, get_logger, journal_field_name, setup, stderr_is_journal


def parse_native(data: bytes) -> List[Tuple[str, bytes]]:
    """Read journald's native protocol the way journald does: up to the next newline is
    either KEY=value, or (no "=") a KEY followed by a 64-bit LE length and raw bytes."""
    fields = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            pos = end + 1
        else:
            key = line
            size = int.from_bytes(data[end + 1 : end + 9], "little")
            value = data[end + 9 : end + 9 + size]
            assert len(value) == size, "truncated binary field"
            assert data[end + 9 + size : end + 10 + size] == b"\n", "binary field not newline-terminated"
            pos = end + 10 + size
        fields.append((key.decode("ascii"), value))
    return fields


class FakeJournal:
    """A bound SOCK_DGRAM socket; next() returns one event's fields (reading a passed memfd too)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(5)
        self.last_fds: List[int] = []

    def raw(self) -> bytes:
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 20, 4)
        self.last_fds = fds
        if fds:  # the memfd form: empty datagram, payload in the file
            assert data == b""
            data = os.pread(fds[0], os.fstat(fds[0]).st_size, 0)  # as journald reads it: from 0
        return data

    def next(self) -> List[Tuple[str, bytes]]:
        return parse_native(self.raw())

    def next_dict(self) -> dict:
        return {k: v.decode() for k, v in self.next()}

    def empty(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(1)
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(5)
        return False

    def close(self) -> None:
        for fd in self.last_fds:
            os.close(fd)
        self.sock.close()


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("MIGD_JOURNAL_SOCKET", raising=False)
    monkeypatch.setattr(migd.log, "_output", None)
    yield
    if migd.log._output is not None:
        migd.log._output.close()


@pytest.fixture
def sockdir() -> Iterator[str]:
    # Short path: AF_UNIX names are limited to 107 bytes, pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="migdlog", dir="/tmp")
    yield d
    shutil.rmtree(d)


@pytest.fixture
def journal(sockdir: str) -> Iterator[FakeJournal]:
    j = FakeJournal(os.path.join(sockdir, "socket"))
    yield j
    j.close()


def without_code(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if not k.startswith("CODE_")}


# --- journal datagrams -------------------------------------------------------------------


def test_journal_fields_exact(journal: FakeJournal) -> None:
    assert setup(target="journal", journal_socket=journal.path) == "journal"
    log = get_logger()
    log.info("gi_created", msg="GPU 0: created 1g.10gb at 0:1", gpu=0, profile="1g.10gb", placement="0:1")
    fields = journal.next()
    assert [kv for kv in fields if not kv[0].startswith("CODE_")] == [
        ("MESSAGE", b"GPU 0: created 1g.10gb at 0:1"),
        ("PRIORITY", b"6"),
        ("SYSLOG_IDENTIFIER", b"migd"),
        ("MIGD_EVENT", b"gi_created"),
        ("MIGD_GPU", b"0"),
        ("MIGD_PROFILE", b"1g.10gb"),
        ("MIGD_PLACEMENT", b"0:1"),
    ]
    code = dict(fields)
    assert code["CODE_FILE"].decode() == __file__
    assert code["CODE_FUNC"] == b"test_journal_fields_exact"
    assert int(code["CODE_LINE"]) > 0


@pytest.mark.parametrize(
    "method,priority",
    [("debug", "7"), ("info", "6"), ("warning", "4"), ("error", "3"), ("critical", "2")],
)
def test_priority_per_level(journal: FakeJournal, method: str, priority: str) -> None:
    setup(level="debug", target="journal", journal_socket=journal.path, identifier="migd-test")
    getattr(get_logger(), method)("drift", msg="GPU 0: layout drifted", gpu=0)
    fields = journal.next_dict()
    assert fields["PRIORITY"] == priority
    assert fields["SYSLOG_IDENTIFIER"] == "migd-test"
    assert fields["MESSAGE"] == "GPU 0: layout drifted"


def test_value_encoding_and_key_sanitizing(journal: FakeJournal) -> None:
    setup(target="journal", journal_socket=journal.path)
    get_logger().warning(
        "drift",
        msg="m",
        expected=["1g.10gb", "2g.20gb"],
        found={"gi": 1, "profile": "é"},
        enabled=True,
        disabled=False,
        missing=None,
        ratio=0.5,
        **{"mig-mode": "on", "ünï code": "x", "_private": "p", "9lives": "n", "x" * 80: "long"},
    )
    fields = without_code(journal.next_dict())
    assert fields["MIGD_EXPECTED"] == '["1g.10gb","2g.20gb"]'
    assert fields["MIGD_FOUND"] == '{"gi":1,"profile":"é"}'
    assert fields["MIGD_ENABLED"] == "true"
    assert fields["MIGD_DISABLED"] == "false"
    assert fields["MIGD_MISSING"] == "null"
    assert fields["MIGD_RATIO"] == "0.5"
    assert fields["MIGD_MIG_MODE"] == "on"
    assert fields["MIGD__N__CODE"] == "x"
    assert fields["MIGD__PRIVATE"] == "p"
    assert fields["MIGD_9LIVES"] == "n"
    assert fields["MIGD_" + "X" * 59] == "long"
    for key in fields:
        assert len(key) <= 64 and key[0].isalpha() and key.isupper()
        assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def test_message_built_from_event_and_fields(journal: FakeJournal) -> None:
    setup(target="journal", journal_socket=journal.path)
    get_logger().info("mode_set", gpu=1, mig=True, note="two words")
    fields = journal.next_dict()
    assert fields["MESSAGE"] == 'mode_set gpu=1 mig=true note="two words"'
    assert fields["MIGD_EVENT"] == "mode_set"


def test_newline_values_use_binary_form(journal: FakeJournal) -> None:
    setup(target="journal", journal_socket=journal.path)
    stderr_text = "line one\nline two\n"
    get_logger().error("nvidia_smi_failed", msg="nvidia-smi failed", stderr=stderr_text)
    raw = journal.raw()
    assert b"MIGD_STDERR\n" + len(stderr_text).to_bytes(8, "little") + stderr_text.encode() + b"\n" in raw
    assert b"MESSAGE=nvidia-smi failed\n" in raw
    assert dict(parse_native(raw))["MIGD_STDERR"] == stderr_text.encode()


def test_message_stays_one_line(journal: FakeJournal) -> None:
    setup(target="journal", journal_socket=journal.path)
    get_logger().info("x", msg="first\nsecond")
    raw = journal.raw()
    assert b"MESSAGE=first\\nsecond\n" in raw


def test_bound_fields(journal: FakeJournal) -> None:
    setup(target="journal", journal_socket=journal.path)
    get_logger(gpu=3).bind(uuid="GPU-abc").info("ready", msg="ready")
    fields = journal.next_dict()
    assert fields["MIGD_GPU"] == "3" and fields["MIGD_UUID"] == "GPU-abc"


def test_exception_one_line_and_traceback_only_at_debug(journal: FakeJournal) -> None:
    setup(target="journal", journal_socket=journal.path)
    log = get_logger()
    try:
        raise RuntimeError("NVML: Insufficient Resources\nsecond line")
    except RuntimeError:
        log.error("apply_failed", msg="GPU 0: apply failed", exc_info=True, gpu=0)
        log.exception("apply_failed", msg="GPU 0: apply failed")
    for _ in range(2):
        fields = journal.next_dict()
        assert fields["MESSAGE"] == "GPU 0: apply failed: RuntimeError: NVML: Insufficient Resources\\nsecond line"
        assert fields["MIGD_EXCEPTION"] == "RuntimeError: NVML: Insufficient Resources\\nsecond line"
        assert fields["PRIORITY"] == "3"
        assert "MIGD_TRACEBACK" not in fields

    setup(level="debug", target="journal", journal_socket=journal.path)
    try:
        {}["gpu"]
    except KeyError as e:
        log.error("lookup_failed", exc_info=e)
    fields = journal.next_dict()
    assert fields["MESSAGE"] == "lookup_failed: KeyError: 'gpu'"
    assert fields["MIGD_TRACEBACK"].startswith("Traceback (most recent call last):\n")
    assert fields["MIGD_TRACEBACK"].endswith("KeyError: 'gpu'\n")


def test_exc_info_without_exception_is_ignored(journal: FakeJournal) -> None:
    setup(target="journal", journal_socket=journal.path)
    get_logger().error("odd", msg="no exception here", exc_info=True)
    fields = journal.next_dict()
    assert fields["MESSAGE"] == "no exception here"
    assert "MIGD_EXCEPTION" not in fields


def test_oversized_event_goes_through_sealed_memfd(journal: FakeJournal) -> None:
    setup(target="journal", journal_socket=journal.path)
    big = "x" * (4 << 20) + "\nend"  # far over the default socket send buffer: EMSGSIZE
    get_logger().info("dump", msg="big dump", blob=big)
    fields = dict(journal.next())
    assert journal.last_fds, "expected the payload in a passed file descriptor"
    seals = fcntl.fcntl(journal.last_fds[0], fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
    assert fields["MESSAGE"] == b"big dump"
    assert fields["MIGD_BLOB"] == big.encode()


# --- filtering ---------------------------------------------------------------------------


def test_level_filtering(journal: FakeJournal) -> None:
    setup(level="warning", target="journal", journal_socket=journal.path)
    log = get_logger()
    log.debug("a", msg="a")
    log.info("b", msg="b")
    log.warning("c", msg="c")
    log.error("d", msg="d")
    assert journal.next_dict()["MESSAGE"] == "c"
    assert journal.next_dict()["MESSAGE"] == "d"
    assert journal.empty()


def test_quiet_drops_info(capsys: pytest.CaptureFixture) -> None:
    setup(level="debug", target="stderr", quiet=True)
    log = get_logger()
    log.info("noise", msg="noise")
    log.warning("drift", msg="kept")
    assert capsys.readouterr().err == "migd[warning]: kept\n"


def test_logger_made_before_setup_follows_setup(capsys: pytest.CaptureFixture) -> None:
    log = get_logger()  # module-level loggers exist before main() calls setup()
    log.info("early", msg="early")  # implicit default setup: info, auto -> stderr here
    setup(level="error", target="stderr")
    log.warning("late", msg="late")
    log.error("late", msg="later")
    assert capsys.readouterr().err == "migd[info]: early\nmigd[error]: later\n"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        setup(level="verbose")
    with pytest.raises(ValueError):
        setup(target="syslog")


# --- stderr ------------------------------------------------------------------------------


def test_stderr_format(capsys: pytest.CaptureFixture) -> None:
    assert setup(target="stderr") == "stderr"
    log = get_logger()
    log.info("gi_created", msg="GPU 0: created 1g.10gb at 0:1", gpu=0, profile="1g.10gb", placement="0:1")
    log.warning("drift", gpu=0, expected=["1g.10gb"], found="", note="two words\nhere", ok=False)
    log.info("started")
    try:
        raise OSError("device busy")
    except OSError:
        log.exception("reset_failed", msg="GPU 1: reset failed", gpu=1)
    assert capsys.readouterr().err.splitlines() == [
        "migd[info]: GPU 0: created 1g.10gb at 0:1 (gpu=0 profile=1g.10gb placement=0:1)",
        'migd[warning]: drift (gpu=0 expected=["1g.10gb"] found="" note="two words\\nhere" ok=false)',
        "migd[info]: started",
        "migd[error]: GPU 1: reset failed: OSError: device busy (gpu=1)",
    ]


def test_stderr_traceback_at_debug(capsys: pytest.CaptureFixture) -> None:
    setup(level="debug", target="stderr")
    try:
        raise ValueError("bad")
    except ValueError:
        get_logger().exception("x", msg="failed")
    err = capsys.readouterr().err
    assert err.startswith("migd[error]: failed: ValueError: bad\nTraceback (most recent call last):\n")


def test_journal_missing_falls_back_to_stderr(sockdir: str, capsys: pytest.CaptureFixture) -> None:
    setup(target="journal", journal_socket=os.path.join(sockdir, "nothing-here"))
    get_logger().error("gpu_lost", msg="GPU 0 fell off the bus", gpu=0)
    assert capsys.readouterr().err == "migd[error]: GPU 0 fell off the bus (gpu=0)\n"


def test_journal_gone_midway_falls_back_per_event(journal: FakeJournal, capsys: pytest.CaptureFixture) -> None:
    setup(target="journal", journal_socket=journal.path)
    log = get_logger()
    log.info("one", msg="one")
    assert journal.next_dict()["MESSAGE"] == "one"
    journal.sock.close()  # journald stopped: the path is left, nobody listens (ECONNREFUSED)
    log.info("two", msg="two")
    os.unlink(journal.path)  # and now the path is gone too (ENOENT)
    log.info("three", msg="three")
    assert capsys.readouterr().err == "migd[info]: two\nmigd[info]: three\n"
    journal.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # journald is back
    journal.sock.bind(journal.path)
    journal.sock.settimeout(5)
    log.info("four", msg="four")
    assert journal.next_dict()["MESSAGE"] == "four"
    assert capsys.readouterr().err == ""


# --- JOURNAL_STREAM / auto ---------------------------------------------------------------


def test_stderr_is_journal_matches_dev_ino(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    try:
        st = os.fstat(w)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal(w)
        with tempfile.TemporaryFile() as other:  # inherited variable, stderr redirected elsewhere
            assert not stderr_is_journal(other.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not stderr_is_journal(w)
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not stderr_is_journal(w)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal(w)
    finally:
        os.close(r)
        os.close(w)
    assert not stderr_is_journal(r)  # closed fd: just False


def _pretend_stderr_is_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(2)  # whatever pytest left on fd 2; auto looks at fd 2
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def test_auto_picks_journal(monkeypatch: pytest.MonkeyPatch, journal: FakeJournal) -> None:
    _pretend_stderr_is_journal(monkeypatch)
    monkeypatch.setenv("MIGD_JOURNAL_SOCKET", journal.path)
    assert setup() == "journal"
    get_logger().info("hello", msg="hi")
    assert journal.next_dict()["MESSAGE"] == "hi"


def test_auto_without_socket_picks_stderr(monkeypatch: pytest.MonkeyPatch, sockdir: str) -> None:
    _pretend_stderr_is_journal(monkeypatch)
    assert setup(journal_socket=os.path.join(sockdir, "absent")) == "stderr"


def test_auto_without_journal_stream_picks_stderr(journal: FakeJournal) -> None:
    assert setup(journal_socket=journal.path) == "stderr"


def test_stderr_fallback_keeps_priority_on_journal_stream(
    monkeypatch: pytest.MonkeyPatch, sockdir: str, capsys: pytest.CaptureFixture
) -> None:
    _pretend_stderr_is_journal(monkeypatch)
    setup(target="journal", journal_socket=os.path.join(sockdir, "absent"))
    get_logger().warning("drift", msg="drifted")
    assert capsys.readouterr().err == "<4>migd[warning]: drifted\n"


# --- encoding round trip -----------------------------------------------------------------


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=20), st.one_of(st.text(), st.binary())),
        max_size=8,
    )
)
def test_encode_decode_round_trip(items: List[Tuple[str, object]]) -> None:
    fields = [(journal_field_name(k), v) for k, v in items]
    decoded = parse_native(encode_journal(fields))  # type: ignore[arg-type]
    assert [k for k, _ in decoded] == [k for k, _ in fields]
    for (_, sent), (_, got) in zip(fields, decoded):
        assert got == (sent if isinstance(sent, bytes) else sent.encode("utf-8"))


@given(st.text(min_size=1, max_size=64))
def test_field_names_are_valid(key: str) -> None:
    name = journal_field_name(key)
    assert name.startswith("MIGD_") and len(name) <= 64
    assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@given(st.text(), st.text())
def test_round_trip_through_socket(value: str, msg: str) -> None:
    # The full path (structlog -> encoder -> socket) with arbitrary text, newlines included.
    d = tempfile.mkdtemp(prefix="migdlog", dir="/tmp")
    j = FakeJournal(os.path.join(d, "s"))
    try:
        setup(target="journal", journal_socket=j.path)
        get_logger().info("prop", msg=msg, value=value)
        fields = dict(j.next())
        assert fields["MIGD_VALUE"].decode("utf-8") == value
        assert b"\n" not in fields["MESSAGE"]
    finally:
        j.close()
        shutil.rmtree(d)


# --- import cost -------------------------------------------------------------------------


def test_import_does_not_load_structlog() -> None:
    code = "import sys, migd.log; assert 'structlog' not in sys.modules; print('ok')"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout == "ok\n", out.stderr


def test_logging_goes_through_structlog(journal: FakeJournal) -> None:
    import structlog

    setup(target="journal", journal_socket=journal.path)
    log = get_logger()
    log.info("x", msg="x")
    journal.next()
    assert isinstance(log._bound, structlog.BoundLoggerBase)


# --- the structlog pipeline ----------------------------------------------------------------


def test_capture_logs_sees_events_with_bound_gpu_context() -> None:
    """Tests capture through structlog's own capture_logs; GPU context is bound with log.bind(gpu=i)."""
    from structlog.testing import capture_logs

    setup(level="info", target="stderr")
    log = get_logger().bind(gpu=3)
    with capture_logs() as logs:
        log.info("gpu_applied", msg="GPU 3: applied 2 changes", changes=2)
        log.debug("hidden", msg="below the level: filtered by structlog's filtering bound logger")
    assert logs == [{"event": "gpu_applied", "msg": "GPU 3: applied 2 changes", "gpu": 3, "changes": 2,
                     "log_level": "info"}]


def test_pipeline_is_processors_ending_in_the_journal_renderer(journal: FakeJournal) -> None:
    import structlog

    setup(target="journal", journal_socket=journal.path)
    get_logger(gpu=1).warning("drift", msg="GPU 1: drift")
    fields = journal.next_dict()
    assert fields["MIGD_GPU"] == "1" and fields["PRIORITY"] == "4" and fields["MIGD_EVENT"] == "drift"
    sp = structlog.processors
    processors = structlog.get_config()["processors"]
    assert processors[0] is sp.add_log_level
    assert isinstance(processors[1], sp.CallsiteParameterAdder) and isinstance(processors[2], sp.ExceptionRenderer)
    assert [getattr(p, "__name__", "") for p in processors[3:]] == ["to_record", "render_journal"]
    setup(target="stderr")  # no call site on a terminal line
    get_logger().info("x", msg="x")
    processors = structlog.get_config()["processors"]
    assert processors[0] is sp.add_log_level and isinstance(processors[1], sp.ExceptionRenderer)
    assert [getattr(p, "__name__", "") for p in processors[2:]] == ["to_record", "render_console"]


@pytest.mark.parametrize("missing", ["ExceptionRenderer", "CallsiteParameterAdder"])
def test_structlog_older_than_the_processors_it_lacks(journal: FakeJournal, monkeypatch: pytest.MonkeyPatch,
                                                        missing: str) -> None:
    """structlog >= 21.1 is supported: ExceptionRenderer came in 22.1, CallsiteParameterAdder in 21.5. Without
    the first the exception reads the same; without the second, entries lack only CODE_*."""
    import structlog

    monkeypatch.delattr(structlog.processors, missing)
    setup(level="debug", target="journal", journal_socket=journal.path)
    try:
        raise RuntimeError("NVML: Unknown Error")
    except RuntimeError:
        get_logger().exception("apply_failed", msg="GPU 0: apply failed", gpu=0)
    get_logger().error("odd", msg="no exception here", exc_info=True)
    fields = journal.next_dict()
    assert fields["MESSAGE"] == "GPU 0: apply failed: RuntimeError: NVML: Unknown Error"
    assert fields["MIGD_EXCEPTION"] == "RuntimeError: NVML: Unknown Error" and fields["MIGD_GPU"] == "0"
    assert fields["MIGD_TRACEBACK"].startswith("Traceback (most recent call last):\n")
    assert ("CODE_FUNC" in fields) == (missing != "CallsiteParameterAdder")
    assert "MIGD_EXCEPTION" not in journal.next_dict()
