"""Host-name patterns for `[[gpu]] hosts = [...]`: shell globs plus Slurm-style number ranges. Pure.

`dgx-a*` is a glob (`*`, `?`); `node[01-16]` and `node[1,3,5-7]` are Slurm hostlist ranges, zero-padding kept: the
width of a range is the width of its first number as written, so `[01-16]` means node01 … node16 and `[8-10]`
means node8, node9, node10. Brackets are always ranges here, never a glob character class. Matching ignores case
(host names do) and never expands a range, so `node[0-99999999]` costs nothing; matching walks the name once per
token, never backtracks (see `matches`), so a long list against a 253-character name stays fast.

Which names a host has: its static name (/etc/hostname, `hostnamectl --static`; see `static_host`: the kernel's
name only where there is none) and the short name (up to the first dot). A pattern matching either one matches
the host. No DNS lookup: at boot the network may not be up, and migd runs without network access.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from ._record import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple, Union

MAX_PATTERN = 253  # the longest DNS name
MAX_PATTERNS = 4096  # per entry: matching is linear in them (~0.5 ms each at worst), a fleet lists fewer
_LITERAL = re.compile(r"[a-z0-9._-]+")
_ITEM = re.compile(r"^(\d{1,9})(?:-(\d{1,9}))?$")


@dataclass(frozen=True)
class _Range:
    spans: Tuple[Tuple[int, int, int], ...]  # (low, high, width)

    def accepts(self, digits: str) -> bool:
        value = int(digits)
        return any(lo <= value <= hi and digits == str(value).zfill(width) for lo, hi, width in self.spans)

    @property
    def bounds(self) -> Dict[int, Tuple[Tuple[str, str], ...]]:
        """Digit count k -> (lowest, highest) k-digit strings it accepts, per span: fixed-length digit strings
        compare like their numbers, so acceptance is two string comparisons (`accepts`, without int())."""
        out: Dict[int, List[Tuple[str, str]]] = {}
        for lo, hi, width in self.spans:
            for k in range(width, max(width, len(str(hi))) + 1):
                low = max(lo, 10 ** (k - 1) if k > width else 0)  # wider than written: no leading zero
                high = min(hi, 10 ** k - 1)
                if low <= high:
                    out.setdefault(k, []).append((str(low).zfill(k), str(high).zfill(k)))
        return {k: tuple(v) for k, v in out.items()}



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
    """Does host `name` match `pattern` (see the module docstring)? A bad pattern matches nothing.

    Linear in the name per token: the positions where the tokens so far can end are one bit set, each token moves
    it at once (a literal: where it occurs; `?`: one on; `*`: every position from the first; a range: the digit
    runs it accepts, at most 9 digits). No backtracking, so 1000 patterns against a 253-character name take
    milliseconds, not minutes (issue 17)."""
    try:
        tokens = compile_pattern(pattern)
    except PatternError:
        return False
    name = name.strip().lower()
    if any(isinstance(t, str) and t not in "*?" and t not in name for t in tokens):
        return False  # a literal the name lacks: no need to walk it
    length = len(name)
    full = (1 << (length + 1)) - 1
    ends = 1  # bit i: tokens so far match name[:i]
    for tok in tokens:
        if tok == "*":
            ends = full & ~((ends & -ends) - 1)  # every position from the first one reached
        elif tok == "?":
            ends = (ends << 1) & full
        elif isinstance(tok, _Range):
            ends = _range_step(tok, name, ends)
        else:
            ends = (ends & _occurrences(tok, name)) << len(tok)
        if not ends:
            return False
    return bool(ends >> length & 1)


def _occurrences(literal: str, name: str) -> int:
    """Bit i set where `literal` starts at name[i]."""
    out, i = 0, name.find(literal)
    while i >= 0:
        out |= 1 << i
        i = name.find(literal, i + 1)
    return out


def _range_step(tok: _Range, name: str, ends: int) -> int:
    """From the positions `ends`, past one number the range accepts (a run of digits read whole or in part)."""
    numbers = _numbers(name)
    out = 0
    for k, spans in _bounds(tok).items():
        if k in numbers:
            at = numbers[k]
            starts = 0
            for low, high in spans:
                starts |= at.between(low, high)
            out |= (ends & starts) << k
    return out


class _Numbers:
    """Where each k-digit string of a name starts, sorted by the string, with an OR table over that order: the
    positions of every k-digit number from `low` to `high` are two bisections and two ORs away, whatever the
    range (so a range after a `*`, which can start anywhere, costs no walk over the name)."""

    def __init__(self, found: List[Tuple[str, int]]):
        found.sort()
        self.keys = [text for text, _ in found]
        level = [1 << i for _, i in found]
        self.table: List[List[int]] = [level]  # table[p][n]: OR of the 2**p entries from n
        while 2 ** len(self.table) <= len(level):
            half = 2 ** (len(self.table) - 1)
            prev = self.table[-1]
            self.table.append([prev[n] | prev[n + half] for n in range(len(prev) - half)])

    def between(self, low: str, high: str) -> int:
        first, last = bisect_left(self.keys, low), bisect_right(self.keys, high)
        if first >= last:
            return 0
        p = (last - first).bit_length() - 1
        return self.table[p][first] | self.table[p][last - (1 << p)]


@lru_cache(maxsize=16)
def _numbers(name: str) -> Dict[int, _Numbers]:
    """k (1 to 9) -> the name's k-digit strings (every start, overlapping), for _range_step."""
    found: Dict[int, List[Tuple[str, int]]] = {}
    for i in range(len(name)):
        for k in range(1, 10):
            digits = name[i:i + k]
            if len(digits) < k or not digits[-1].isdigit():
                break
            found.setdefault(k, []).append((digits, i))
    return {k: _Numbers(v) for k, v in found.items()}


@lru_cache(maxsize=4096)
def _bounds(tok: _Range) -> Dict[int, Tuple[Tuple[str, str], ...]]:
    return tok.bounds


def names_of(host: str) -> Tuple[str, ...]:
    """The names a host answers to: as given, and the short name (up to the first dot)."""
    full = host.strip().lower().rstrip(".")
    short = full.split(".", 1)[0]
    return (full,) if short == full else (full, short)


STATIC_HOSTNAME = "/etc/hostname"
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")


@dataclass(frozen=True)
class HostName:
    """The name `hosts = [...]` is matched against, and where it came from (said by validate and boot)."""

    name: str
    source: str


def static_host(path: str = STATIC_HOSTNAME) -> HostName:
    """This machine's static host name: the one in /etc/hostname (hostname(5): the first line that is not a
    comment), which is what `hostnamectl --static` shows and what systemd names the machine with before any
    service starts. It is final when migd.service runs, before the network: a name DHCP or cloud-init hands out
    later is transient and not yet set then, so matching on the kernel's current name would match differently at
    boot than afterwards. Without a static name, the kernel's (transient) one, and the source says so."""
    try:
        with open(path, "rb") as f:
            lines = f.read(4096).decode("utf-8", errors="replace").splitlines()
        name = next((x.strip() for x in lines if x.strip() and not x.strip().startswith("#")), "")
    except OSError:
        name = ""
    if _HOST_NAME.match(name):
        return HostName(name, f"static host name, {path}")
    import socket  # here: most runs never ask, and socket costs ~2 ms to import

    why = f"{path} has no host name" if not name else f"{path} holds no valid host name"
    return HostName(socket.gethostname(), f"the kernel's host name: {why}, so a name given later (DHCP, "
                                          "cloud-init) is not seen at boot")


def this_host() -> str:
    return static_host().name


def host_matches(patterns: Sequence[str], host: Optional[str] = None) -> bool:
    """An entry with these `hosts` applies on `host` (None: this machine). No patterns: every host."""
    if not patterns:
        return True
    names = names_of(this_host() if host is None else host)
    return any(matches(p, n) for p in patterns for n in names)
