"""Logging for migd: structlog in front, systemd's journal or one stderr line behind.

Call sites::

    from migd.log import get_logger
    log = get_logger()
    log.info("gi_created", msg="GPU 0: created 1g.10gb at 0:1",
             gpu=0, profile="1g.10gb", placement="0:1")

The first argument is a snake_case event name (journal field MIGD_EVENT), ``msg``
the one-line human text (MESSAGE), every other keyword a structured field
(MIGD_<KEY>). Without ``msg`` the text is built as "event key=value ...".

Import cost: structlog takes ~45 ms to import, more than the rest of a short CLI
run, so it is imported on the first log call rather than here; verbs that log
nothing never pay for it. For the same reason socket, json and traceback are
imported where they are used (structlog pulls them in anyway once it loads).

The resident migd-watch process never loads structlog (`lean()`): structlog's
filtering bound logger imports asyncio (and asyncio ssl), ~7 MiB it would keep for
ever. There, an event takes the same pipeline without structlog: the level filter,
``to_record`` and the same renderer and writer, so the journal gets the same entry.
Where structlog is already loaded (tests, capture_logs) it is used as everywhere.
The watch's short-lived reader processes hand their events to it (`divert`,
`replay`), so one process writes the log and tests capture every event.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Tuple, Union

__all__ = ["setup", "start_audit", "get_logger", "Logger", "LEVELS", "journal_field_name", "encode_journal",
           "lean", "divert", "replay"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}  # structlog's numbers
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}  # syslog's numbers

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_FIELD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_FIELD_NAME_MAX = 64  # journald ignores longer field names


# --- encoding --------------------------------------------------------------------------


def field_text(value: Any) -> str:
    """A field value as journal text: str as-is, bool true/false, containers as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, (int, float, list, tuple, dict)):
        import json

        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return str(value)


def journal_field_name(key: str) -> str:
    """MIGD_<KEY> with anything outside [A-Z0-9_] turned into "_".

    The prefix also keeps names from starting with "_" (journald's trusted fields) or a digit.
    """
    name = "MIGD_" + "".join(c if c in _FIELD_CHARS else "_" for c in key.upper())
    return name[:_FIELD_NAME_MAX]


def encode_journal(fields: List[Tuple[str, Union[str, bytes]]]) -> bytes:
    """Serialize fields in journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL).

    "KEY=value\\n" normally; a value containing a newline is sent as
    "KEY\\n" + 64-bit little-endian length + raw bytes + "\\n".
    """
    out = bytearray()
    for key, value in fields:
        data = value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace")
        if b"\n" in data:
            out += key.encode("ascii") + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode("ascii") + b"=" + data + b"\n"
    return bytes(out)


def _one_line(text: str) -> str:
    # Operators read one event per line: a stray newline in a message must not split it.
    return text.strip().replace("\r", "\\r").replace("\n", "\\n")


def _kv_value(value: Any) -> str:
    """A value for a key=value list: its journal text, JSON-quoted when empty or holding a space or a
    non-printable character (keeps the line one line, splittable on spaces)."""
    text = field_text(value)
    if not text or " " in text or not text.isprintable():
        import json

        text = json.dumps(text, ensure_ascii=False)
    return text


def stderr_is_journal(fd: int = 2) -> bool:
    """True when fd is the stream systemd connected to the journal.

    systemd sets JOURNAL_STREAM=<st_dev>:<st_ino> of that stream; comparing it with the fd
    tells us the variable was not just inherited by a process whose stderr was redirected.
    """
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in expected.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


# --- structlog's processors, and what migd gives them ------------------------------------

# structlog.processors.CallsiteParameterAdder's keys -> journald's CODE_* fields (added for the journal only)
_CODE_FIELDS = (("pathname", "CODE_FILE"), ("lineno", "CODE_LINE"), ("func_name", "CODE_FUNC"))


class _Exception:
    """What the exception renderer puts under "exception": one line "Type: text", and the traceback where the
    level is debug (tracebacks are for developers, kept out of info logs)."""

    __slots__ = ("summary", "traceback")

    def __init__(self, exc_info: Any, with_traceback: bool) -> None:
        import traceback

        self.summary = _one_line("".join(traceback.format_exception_only(exc_info[0], exc_info[1])))
        self.traceback = "".join(traceback.format_exception(*exc_info)) if with_traceback else None


def _exception_formatter(with_traceback: bool) -> Any:
    def formatter(exc_info: Any) -> Optional[_Exception]:
        # structlog 22.x hands over sys.exc_info() for exc_info=True even outside an except block
        return _Exception(exc_info, with_traceback) if exc_info[0] is not None else None

    return formatter


def _processors(structlog: Any, journal: bool, debug: bool) -> List[Any]:
    """add_log_level, the call site (journal only: CODE_FILE/LINE/FUNC), the exception as migd words it. Both
    exist from structlog 22.1 (ExceptionRenderer) and 21.5 (CallsiteParameterAdder); before that (>= 21.1 is
    supported), journal entries lack CODE_* and exc_info is read here, as structlog's own renderer reads it."""
    sp = structlog.processors
    chain = [sp.add_log_level]
    adder = getattr(sp, "CallsiteParameterAdder", None)
    if journal and adder is not None:
        names = {sp.CallsiteParameter.PATHNAME, sp.CallsiteParameter.LINENO, sp.CallsiteParameter.FUNC_NAME}
        chain.append(adder(names, additional_ignores=[__name__]))  # the call site is outside this module
    formatter = _exception_formatter(debug)
    renderer = getattr(sp, "ExceptionRenderer", None)
    chain.append(renderer(formatter) if renderer is not None else _OldExceptionRenderer(formatter))
    return chain


class _OldExceptionRenderer:
    """structlog.processors.ExceptionRenderer for structlog < 22.1, which lacks it."""

    def __init__(self, formatter: Any) -> None:
        self.formatter = formatter

    def __call__(self, _logger: Any, _method: str, ev: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        exc_info = _exc_tuple(ev.pop("exc_info", None))
        if exc_info:
            ev["exception"] = self.formatter(exc_info)
        return ev


def _exc_tuple(exc_info: Any) -> Optional[Tuple[Any, Any, Any]]:
    """exc_info as structlog takes it (an exception, a sys.exc_info() tuple, or True: the one being handled)."""
    if isinstance(exc_info, BaseException):
        return (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple):
        return exc_info if exc_info and exc_info[0] is not None else None
    if exc_info:
        info = sys.exc_info()
        return info if info[0] is not None else None
    return None


# --- output ----------------------------------------------------------------------------


class _Record:
    """One formatted event, between the structlog processor and the writers."""

    __slots__ = ("level", "event", "message", "text", "fields", "exception", "traceback", "code")

    def __init__(
        self,
        level: str,
        event: str,
        message: str,
        text: str,
        fields: Dict[str, Any],
        exception: Optional[str],
        traceback: Optional[str],
        code: List[Tuple[str, str]],
    ) -> None:
        self.level = level  # debug, info, warning, error, critical
        self.event = event
        self.message = message  # journal MESSAGE: msg, or "event key=value ..."
        self.text = text  # stderr line lead: msg, or the event name
        self.fields = fields
        self.exception = exception  # one-line "Type: text"
        self.traceback = traceback  # only at debug level
        self.code = code  # CODE_FILE, CODE_LINE, CODE_FUNC: the call site (journal only)


class _Output:
    """What one setup() decided, and the structlog pipeline built from it:

    structlog's processors ``add_log_level``, ``CallsiteParameterAdder`` (journal only) and
    ``ExceptionRenderer`` -> ``to_record`` (event name, msg, exception, bound and event
    fields) -> the final renderer, ``render_journal`` (systemd's native protocol) or
    ``render_console`` (one ``migd[level]: ...`` line); this object is the logger structlog hands
    the rendering to (``_emit`` writes it). Levels are filtered by structlog's filtering bound
    logger, GPU context is bound with ``log.bind(gpu=i)``. Tests capture events with
    ``structlog.testing.capture_logs()``, which swaps the processors and keeps the rest.
    """

    def __init__(self, level: str, target: str, identifier: str, journal_socket: str,
                 audit: Optional[Dict[str, str]] = None, audit_required: bool = True) -> None:
        self.level = level
        self.target = target
        self.identifier = identifier
        self.journal_socket = journal_socket
        # The audit trail (`migd apply` from a shell): every event at info and above also goes to the journal,
        # with these fields (who ran it), whatever the terminal's level; see setup().
        self.audit = audit
        self.audit_required = audit_required
        self._audit_failed = False
        # If the journal socket fails and stderr is itself a journal stream, a "<N>" prefix
        # keeps the priority (journald parses it, SyslogLevelPrefix= defaults to yes).
        self.prefix_priority = stderr_is_journal()
        self._sock: Any = None
        self._kv: Any = None  # structlog.processors.KeyValueRenderer, for the "key=value ..." lists
        self.configured = False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def floor(self) -> int:
        """The lowest level let through (the audit trail takes info and above whatever stderr shows)."""
        return min(LEVELS[self.level], LEVELS["info"]) if self.audit is not None else LEVELS[self.level]

    def configure(self) -> None:
        """Point structlog's global configuration at this output (at the first log call, not at
        setup(): see the module docstring). Inside capture_logs() only the level changes."""
        import structlog  # here, not at module import: see the module docstring

        wrapper = structlog.make_filtering_bound_logger(self.floor())
        self._kv = structlog.processors.KeyValueRenderer(repr_native_str=False)  # values: _kv_value's text
        capturing = any(isinstance(p, structlog.testing.LogCapture) for p in structlog.get_config()["processors"])
        if capturing:
            structlog.configure(wrapper_class=wrapper)
        else:
            renderer = self.render_journal if self.target == "journal" else self.render_console
            structlog.configure(
                processors=_processors(structlog, self.target == "journal", self.level == "debug")
                + [self.to_record, renderer],
                wrapper_class=wrapper,
                logger_factory=lambda *_: self,
                cache_logger_on_first_use=False,  # setup() may change the pipeline; capture_logs() too
            )
        self.configured = True

    # processor: event dict -> {"record": _Record}
    def to_record(self, _logger: Any, _method: str, ev: MutableMapping[str, Any]) -> Dict[str, Any]:
        level = str(ev.pop("level", _method))
        event = str(ev.pop("event", ""))
        msg = ev.pop("msg", None)
        exc: Optional[_Exception] = ev.pop("exception", None)
        code = [(name, str(ev.pop(key))) for key, name in _CODE_FIELDS if key in ev]
        ev.pop("stack_info", None)  # multi-line by nature; not supported
        fields = ev

        # The journal shows only MESSAGE by default, so without msg it carries the fields too;
        # the stderr line always lists them, so there the event name alone leads.
        if msg is None:
            message = " ".join([event] + ([self._key_values(fields)] if fields else []))
            text = event
        else:
            message = text = str(msg)
        summary = tb = None
        if exc is not None:
            summary, tb = exc.summary, exc.traceback
            message, text = f"{message}: {summary}", f"{text}: {summary}"
        return {"record": _Record(level, event, _one_line(message), _one_line(text), dict(fields), summary, tb,
                                  code)}

    def _key_values(self, fields: Mapping[str, Any]) -> str:
        values = {k: _kv_value(v) for k, v in fields.items()}
        if self._kv is None:  # the lean path (the resident migd-watch: no structlog): KeyValueRenderer's format
            return " ".join(f"{k}={v}" for k, v in values.items())
        return str(self._kv(None, "", values))

    # final renderers: -> the arguments of _emit
    def render_journal(self, _logger: Any, _method: str, ev: MutableMapping[str, Any]) -> Any:
        record: _Record = ev["record"]
        return (encode_journal(self._journal_fields(record)), record), {}

    def render_console(self, _logger: Any, _method: str, ev: MutableMapping[str, Any]) -> Any:
        record: _Record = ev["record"]
        return (self._console_line(record), record), {}

    def _emit(self, data: Union[bytes, str], record: _Record) -> None:
        if self.audit is not None:
            journaled = self._send_audit(record)
            if LEVELS[record.level] < LEVELS[self.level] or (journaled and isinstance(data, bytes)):
                return  # the terminal stays terse; the journal has it
            if isinstance(data, bytes):
                data = self._console_line(record)
            self._write_stderr(data)
            return
        if isinstance(data, bytes):
            if self._send_journal(data):
                return
            data = self._console_line(record)  # journald gone: the same event on stderr
        self._write_stderr(data)

    # structlog calls the logger method named after the level.
    debug = info = warning = error = critical = _emit

    def _send_audit(self, r: _Record) -> bool:
        """One audit event to the journal, with who ran migd. When the journal cannot be reached, said once on
        stderr (a real apply's changes would otherwise be logged nowhere); a simulated run's silently."""
        fields = self._journal_fields(r) + [(journal_field_name(k), v) for k, v in (self.audit or {}).items()]
        if self._send_journal(encode_journal(fields)):
            return True
        if not self._audit_failed and self.audit_required:
            self._write_stderr(f"{self.identifier}: the audit trail could not be written to the journal "
                               f"({self.journal_socket}): this run's changes are logged only here")
        self._audit_failed = True
        return False

    def _journal_fields(self, r: _Record) -> List[Tuple[str, Union[str, bytes]]]:
        out: List[Tuple[str, Union[str, bytes]]] = [
            ("MESSAGE", r.message),
            ("PRIORITY", str(PRIORITY[r.level])),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("MIGD_EVENT", r.event),
        ]
        for key, value in r.fields.items():
            out.append((journal_field_name(key), value if isinstance(value, bytes) else field_text(value)))
        if r.exception is not None:
            out.append(("MIGD_EXCEPTION", r.exception))
        if r.traceback is not None:
            out.append(("MIGD_TRACEBACK", r.traceback))
        return out + list(r.code)

    def _send_journal(self, data: bytes) -> bool:
        """One datagram per event. False (never an exception) if journald can't be reached."""
        import errno
        import socket

        try:
            if self._sock is None:
                # Blocking, like libsystemd: journald applies back-pressure rather than losing events.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(data, self.journal_socket)
            return True
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                return False
        # Too big for a datagram: journald accepts the same bytes in a sealed memfd passed
        # as SCM_RIGHTS on an otherwise empty datagram (what sd_journal_sendv does).
        try:
            import fcntl

            fd = os.memfd_create("migd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                with open(fd, "wb", closefd=False) as f:
                    f.write(data)
                fcntl.fcntl(
                    fd,
                    fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
                )
                # sendmsg, not socket.send_fds: on Python 3.9 that drops the address argument.
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]
                self._sock.sendmsg([], rights, 0, self.journal_socket)
            finally:
                os.close(fd)
            return True
        except (OSError, AttributeError):  # AttributeError: no memfd on this platform
            return False

    def _console_line(self, r: _Record) -> str:
        """migd[<level>]: <msg> (key=value ...), no colours, no timestamp (journald adds one)."""
        line = f"{self.identifier}[{r.level}]: {r.text}"
        if r.fields:
            line += " (" + self._key_values(r.fields) + ")"
        if self.prefix_priority:
            line = f"<{PRIORITY[r.level]}>{line}"
        if r.traceback is not None:  # debug level only: a developer is reading
            line += "\n" + r.traceback.rstrip("\n")
        return line

    def _write_stderr(self, line: str) -> None:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # closed or missing stderr: nowhere left to log
            pass


_output: Optional[_Output] = None


def setup(
    level: str = "info",
    target: str = "auto",
    identifier: str = "migd",
    *,
    quiet: bool = False,
    journal_socket: Optional[str] = None,
    audit: Optional[Dict[str, str]] = None,
    audit_required: bool = True,
) -> str:
    """Configure logging for the process; returns the target chosen ("journal" or "stderr").

    level: debug, info, warning, error or critical. quiet=True raises it to at least
    warning, for CLI verbs whose stdout is the product.
    target: "journal" (native protocol), "stderr", or "auto": the journal when stderr
    is a journal stream (JOURNAL_STREAM) and the socket exists, else stderr.
    journal_socket: defaults to $MIGD_JOURNAL_SOCKET, then /run/systemd/journal/socket.
    audit: the audit trail: every event at info and above also goes to the journal with these fields added (who
    ran migd: audit.actor()), whatever `level` lets through to stderr. audit_required: when the journal cannot be
    reached, say so once on stderr (False: a simulated run, whose changes touch no real GPU).
    May be called again; loggers already handed out follow the new settings.
    """
    global _output
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if quiet and LEVELS[level] < LEVELS["warning"]:
        level = "warning"
    if target not in ("auto", "journal", "stderr"):
        raise ValueError(f"unknown log target {target!r}; expected auto, journal or stderr")
    path = journal_socket or os.environ.get("MIGD_JOURNAL_SOCKET") or JOURNAL_SOCKET
    if target == "auto":
        target = "journal" if stderr_is_journal() and os.path.exists(path) else "stderr"
    if _output is not None:
        _output.close()
    _output = _Output(level, target, identifier, path, audit, audit_required)
    return target


def start_audit(fields: Dict[str, str], required: bool = True) -> None:
    """From now on, the audit trail (see setup()'s `audit`) with these fields."""
    output = _current()
    output.audit, output.audit_required = dict(fields), required
    output.configured = False  # the level filter lets info through from now on


def _current() -> _Output:
    if _output is None:
        setup()  # logging before setup() still works, with the defaults
    assert _output is not None
    return _output


_lean = False  # lean(): this process logs without loading structlog (see the module docstring)
_diverted: Optional[List[Tuple[str, str, Dict[str, Any]]]] = None  # divert(): events kept for another process


def lean() -> None:
    """Log without loading structlog in this process, unless something already loaded it."""
    global _lean
    _lean = True


def divert() -> List[Tuple[str, str, Dict[str, Any]]]:
    """From now on keep every event (level, event, fields) in the list returned, emit none: a reader process's
    events, which the process that started it logs with replay()."""
    global _diverted
    _diverted = []
    return _diverted


def replay(events: List[Tuple[str, str, Dict[str, Any]]]) -> None:
    """Log events a reader process diverted, as if logged here."""
    for level, event, fields in events:
        Logger({})._log(level, event, fields)


def _callsite() -> Dict[str, Any]:
    """Where the event was logged: the first frame outside this module (structlog's CallsiteParameterAdder keys)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return {"pathname": frame.f_code.co_filename, "lineno": frame.f_lineno, "func_name": frame.f_code.co_name}


def _lean_emit(method: str, event: str, fields: Dict[str, Any]) -> None:
    output = _current()
    if LEVELS["error" if method == "exception" else method] < output.floor():
        return
    if method == "exception":
        method, fields = "error", {"exc_info": True, **fields}
    ev: Dict[str, Any] = {**fields, "event": event, "level": method}  # what structlog's add_log_level adds
    ev = dict(_OldExceptionRenderer(_exception_formatter(output.level == "debug"))(None, method, ev))
    if output.target == "journal" and "pathname" not in ev:  # CODE_* as structlog's CallsiteParameterAdder adds them
        ev.update(_callsite())
    record = output.to_record(None, method, ev)
    renderer = output.render_journal if output.target == "journal" else output.render_console
    args, _ = renderer(None, method, record)
    output._emit(*args)


class Logger:
    """What get_logger() returns. Binds a structlog logger on first use (and again after
    setup() is called), so module-level ``log = get_logger()`` costs nothing."""

    __slots__ = ("_context", "_output", "_bound")

    def __init__(self, context: Dict[str, Any]) -> None:
        self._context = context
        self._output: Optional[_Output] = None
        self._bound: Any = None

    def _logger(self) -> Any:
        import structlog  # here, not at module import: see the module docstring

        output = _current()
        if not output.configured:
            output.configure()
        # Bound afresh each time from structlog's current configuration (cheap), so setup() and
        # capture_logs() apply to loggers made before them, like module-level ones.
        self._bound = structlog.get_logger().bind(**self._context)
        self._output = output
        return self._bound

    def bind(self, **fields: Any) -> Logger:
        """A logger that adds these fields to every event."""
        return Logger({**self._context, **fields})

    def _log(self, method: str, event: str, fields: Dict[str, Any]) -> None:
        if _diverted is not None:
            if method == "exception" or "exc_info" in fields:  # a traceback cannot travel: its one-line summary does
                exc = _exc_tuple(fields.pop("exc_info", True))
                method = "error" if method == "exception" else method
                if exc is not None:
                    fields["exception"] = _Exception(exc, with_traceback=False)
            _diverted.append((method, event, {**self._context, **_callsite(), **fields}))
        elif _lean and "structlog" not in sys.modules:
            _lean_emit(method, event, {**self._context, **fields})
        else:
            getattr(self._logger(), method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log("critical", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """error() with the exception being handled (exc_info=True)."""
        self._log("exception", event, fields)


def get_logger(**fields: Any) -> Logger:
    """A logger; fields given here are added to every event it logs."""
    return Logger(dict(fields))
