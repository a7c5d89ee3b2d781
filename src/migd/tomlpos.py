"""Line numbers for TOML key paths. TOML parsers give no positions for a valid document, so `Locator` finds a
key's line with a small scanner over the text (table headers, dotted and quoted keys, arrays of tables, array
elements and inline tables, multi-line strings); a syntax error gets the parser's own position
(`strip_position`, `line_from_message`). Knows nothing of migd's keys.
"""

from __future__ import annotations

import contextlib

import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a TOML bare key: written as it is, any other needs quotes


def strip_position(msg: str) -> str:
    return re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", msg)


def line_from_message(msg: str, text: str) -> Optional[int]:
    m = re.search(r"at line (\d+)", msg)
    if m:
        return int(m.group(1))
    if "at end of document" in msg:  # Python 3.11's tomllib gives no lineno for this one
        return text.count("\n") + 1
    return None


class Locator:
    """Line numbers for key paths like ("gpu", 1, "instances", 2), from a scan of the (already valid) TOML text.

    Follows table headers ([t], [[t]], dotted and quoted names, arrays of tables such as [[gpu.instances]]), dotted
    keys, and values: each array element and inline-table key gets the line it starts on, so a problem inside a
    multi-line `instances = [...]` points at its element. A path not found falls back to its nearest parent.
    """

    def __init__(self, text: str):
        self.lines: Dict[Tuple[Any, ...], int] = {}
        self._text, self._i, self._line = text, 0, 1
        self._arrays: Dict[Tuple[Any, ...], int] = {}  # array-of-tables path -> tables so far
        with contextlib.suppress(ValueError, IndexError, RecursionError):  # locating a line must never hide the
            self._document()                                                # problem being reported
        del self._text

    def line(self, path: Sequence[Any]) -> Optional[int]:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None

    # --- scanning ---------------------------------------------------------------------------------------------

    def _record(self, path: Tuple[Any, ...], line: int) -> None:
        for n in range(1, len(path) + 1):
            self.lines.setdefault(path[:n], line)

    def _peek(self, s: str) -> bool:
        return self._text.startswith(s, self._i)

    def _expect(self, s: str) -> None:
        if not self._peek(s):
            raise ValueError(s)
        self._i += len(s)

    def _blank(self, newlines: bool) -> None:
        """Skip spaces and tabs; with newlines=True also line breaks and comments."""
        t = self._text
        while self._i < len(t):
            c = t[self._i]
            if c in " \t\r":
                self._i += 1
            elif newlines and c == "\n":
                self._i += 1
                self._line += 1
            elif newlines and c == "#":
                while self._i < len(t) and t[self._i] != "\n":
                    self._i += 1
            else:
                return

    def _document(self) -> None:
        t = self._text
        table: Tuple[Any, ...] = ()
        while True:
            self._blank(newlines=True)
            if self._i >= len(t):
                return
            line = self._line
            if self._peek("[["):
                self._i += 2
                keys = self._key()
                self._blank(newlines=False)
                self._expect("]]")
                parent = self._resolve(keys[:-1])
                array = parent + (keys[-1],)
                n = self._arrays.get(array, 0)
                self._arrays[array] = n + 1
                table = array + (n,)
                self._record(table, line)
            elif self._peek("["):
                self._i += 1
                keys = self._key()
                self._blank(newlines=False)
                self._expect("]")
                table = self._resolve(keys)
                self._record(table, line)
            else:
                path = table + tuple(self._key())
                self._blank(newlines=False)
                self._expect("=")
                self._blank(newlines=False)
                self._record(path, line)
                self._value(path)

    def _resolve(self, keys: Sequence[str]) -> Tuple[Any, ...]:
        """A header's path, with the current index of every array of tables on the way ([gpu.instances] -> gpu, N)."""
        path: Tuple[Any, ...] = ()
        for k in keys:
            path += (k,)
            if path in self._arrays:
                path += (self._arrays[path] - 1,)
        return path

    def _key(self) -> List[str]:
        parts = []
        while True:
            self._blank(newlines=False)
            c = self._text[self._i]
            if c in "\"'":
                parts.append(self._string())
            else:
                m = BARE_KEY.match(self._text, self._i)
                if not m:
                    raise ValueError("key")
                parts.append(m.group())
                self._i = m.end()
            self._blank(newlines=False)
            if not self._peek("."):
                return parts
            self._i += 1

    def _string(self) -> str:
        t = self._text
        for quote in ('"""', "'''", '"', "'"):
            if self._peek(quote):
                break
        self._i += len(quote)
        start = self._i
        while True:
            c = t[self._i]  # IndexError at the end: an unterminated string (cannot happen in valid TOML)
            if c == "\\" and quote[0] == '"':
                if t[self._i + 1] == "\n":  # a line-ending backslash in a multi-line string
                    self._line += 1
                self._i += 2
                continue
            if t.startswith(quote, self._i):
                raw = t[start:self._i]
                self._i += len(quote)
                while len(quote) == 3 and self._i < len(t) and t[self._i] == quote[0]:  # """a"""" ends in a quote
                    raw += quote[0]
                    self._i += 1
                break
            if c == "\n":
                self._line += 1
            self._i += 1
        if quote[0] == '"' and "\\" in raw:
            try:
                return str(json.loads('"' + raw + '"'))
            except ValueError:
                return raw
        return raw

    def _value(self, path: Tuple[Any, ...]) -> None:
        t = self._text
        c = t[self._i]
        if c == "[":
            self._i += 1
            n = 0
            while True:
                self._blank(newlines=True)
                if self._peek("]"):
                    self._i += 1
                    return
                self._record(path + (n,), self._line)
                self._value(path + (n,))
                self._blank(newlines=True)
                if self._peek(","):
                    self._i += 1
                    n += 1
                    continue
                self._expect("]")
                return
        if c == "{":
            self._i += 1
            while True:
                self._blank(newlines=True)
                if self._peek("}"):
                    self._i += 1
                    return
                line = self._line
                key = path + tuple(self._key())
                self._blank(newlines=False)
                self._expect("=")
                self._blank(newlines=False)
                self._record(key, line)
                self._value(key)
                self._blank(newlines=True)
                if self._peek(","):
                    self._i += 1
        elif c in "\"'":
            self._string()
        else:  # number, bool, date: up to the next delimiter
            while self._i < len(t) and t[self._i] not in ",]}\n#":
                self._i += 1
