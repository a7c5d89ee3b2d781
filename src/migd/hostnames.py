"""Host-name patterns for `[[gpu]] hosts = [...]`: shell globs plus Slurm-style number ranges. Pure.

`dgx-a*` is a glob (`*`, `?`); `node[01-16]` and `node[1,3,5-7]` are Slurm hostlist ranges, zero-padding kept: the
width of a range is the width of its first number as written, so `[01-16]` means node01 … node16 and `[8-10]`
means node8, node9, node10. Brackets are always ranges here, never a glob character class. Matching ignores case
(host names do) and never expands a range, so `node[0-99999999]` costs nothing.

Which names a host has: its name as the kernel reports it (`hostname`, what systemd sets from /etc/hostname) and
the short name (up to the first dot). A pattern matching either one matches the host. No DNS lookup: at boot the
network may not be up, and migd runs without network access.
"""

from __future__ import annotations

import re
from ._record import dataclass
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple, Union

MAX_PATTERN = 253  # the longest DNS name
_LITERAL = re.compile(r"[a-z0-9._-]+")
_ITEM = re.compile(r"^(\d{1,9})(?:-(\d{1,9}))?$")


@dataclass(frozen=True)
class _Range:
    spans: Tuple[Tuple[int, int, int], ...]  # (low, high, width)

    def accepts(self, digits: str) -> bool:
        value = int(digits)
        return any(lo <= value <= hi and digits == str(value).zfill(width) for lo, hi, width in self.spans)


_Token = Union[str, _Range]  # a literal, "*", "?" or a range


class PatternError(ValueError):
    """Not a host-name pattern; the message says why, for a config error."""


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Tuple[_Token, ...]:
    """Tokens of a pattern (lower-cased, surrounding spaces dropped). Raises PatternError."""
    text = pattern.strip().lower()
    if not text:
        raise PatternError("an empty host-name pattern")
    if len(text) > MAX_PATTERN:
        raise PatternError(f"longer than {MAX_PATTERN} characters: not a host name")
    tokens: List[_Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in "*?":
            tokens.append(c)
            i += 1
        elif c == "[":
            end = text.find("]", i)
            if end < 0:
                raise PatternError(f"{pattern.strip()!r}: '[' without ']' (a range is written like node[01-16])")
            tokens.append(_parse_range(text[i + 1:end]))
            i = end + 1
        else:
            m = _LITERAL.match(text, i)
            if not m:
                raise PatternError(f"{pattern.strip()!r}: {c!r} cannot be in a host name (letters, digits, '.', "
                                   "'-', the globs * and ?, and ranges like [01-16])")
            tokens.append(m.group())
            i = m.end()
    return tuple(tokens)


def _parse_range(body: str) -> _Range:
    if not body:
        raise PatternError("an empty range []: write the numbers, e.g. [01-16] or [1,3,5-7]")
    spans = []
    for item in body.split(","):
        m = _ITEM.match(item.strip())
        if not m:
            raise PatternError(f"[{body}]: {item.strip()!r} is not a number or a range like 01-16 "
                               "(brackets hold numbers only)")
        low, high = m.group(1), m.group(2) or m.group(1)
        if int(high) < int(low):
            raise PatternError(f"[{body}]: the range {low}-{high} runs backwards (write {high}-{low})")
        spans.append((int(low), int(high), len(low)))
    return _Range(tuple(spans))


def matches(pattern: str, name: str) -> bool:
    """Does host `name` match `pattern` (see the module docstring)? A bad pattern matches nothing."""
    try:
        tokens = compile_pattern(pattern)
    except PatternError:
        return False
    name = name.strip().lower()

    @lru_cache(maxsize=None)
    def at(t: int, i: int) -> bool:  # tokens[t:] match name[i:]; memoised, so `*` backtracking stays polynomial
        if t == len(tokens):
            return i == len(name)
        tok = tokens[t]
        if tok == "*":
            return any(at(t + 1, j) for j in range(i, len(name) + 1))
        if tok == "?":
            return i < len(name) and at(t + 1, i + 1)
        if isinstance(tok, _Range):
            j = i
            while j < len(name) and name[j].isdigit():
                j += 1
                if tok.accepts(name[i:j]) and at(t + 1, j):
                    return True
            return False
        return name.startswith(tok, i) and at(t + 1, i + len(tok))

    return at(0, 0)


def names_of(host: str) -> Tuple[str, ...]:
    """The names a host answers to: as given, and the short name (up to the first dot)."""
    full = host.strip().lower().rstrip(".")
    short = full.split(".", 1)[0]
    return (full,) if short == full else (full, short)


def this_host() -> str:
    import socket  # here: most runs never ask, and socket costs ~2 ms to import

    return socket.gethostname()


def host_matches(patterns: Sequence[str], host: Optional[str] = None) -> bool:
    """An entry with these `hosts` applies on `host` (None: this machine). No patterns: every host."""
    if not patterns:
        return True
    names = names_of(this_host() if host is None else host)
    return any(matches(p, n) for p in patterns for n in names)
