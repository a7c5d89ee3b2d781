"""A small YAML reader for the shape of mig-parted's config.yaml, with the line of every value. Pure.

Why not PyYAML: migd's runtime depends on nothing beyond nvidia-ml-py, structlog, sdnotify and tomli, and only
`migd import` reads YAML, once, on an admin's machine. mig-parted's files use a small part of YAML (block mappings
and sequences, one-line flow lists and maps, quoted and plain scalars, comments), which this reads; anything else
(anchors, aliases, tags, multi-line scalars, several documents, tabs) is refused with its line, never guessed at.
Every value's line is kept, so a problem in a config names `mig-configs.NAME[2].mig-devices` and its line.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

Path = Tuple[Any, ...]


class YamlError(ValueError):
    def __init__(self, message: str, line: int):
        super().__init__(f"line {line}: {message}")
        self.line = line


class Document:
    """The parsed value and the line each key path starts on (("mig-configs", "all-balanced", 0, "devices"))."""

    def __init__(self, value: Any, lines: Dict[Path, int]):
        self.value = value
        self.lines = lines

    def line(self, path: Path) -> Optional[int]:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


_Line = Tuple[int, int, str]  # (line number, indent, text without comment)
_INT = re.compile(r"[-+]?[0-9]+\Z")
_PLAIN_BAD = ("&", "*", "!", "|", ">", "%", "@", "`")


def parse(text: str) -> Document:
    lines = _lines(text)
    out: Dict[Path, int] = {}
    if not lines:
        return Document(None, out)
    value, i = _block(lines, 0, lines[0][1], (), out)
    if i < len(lines):
        raise YamlError("unexpected indentation", lines[i][0])
    return Document(value, out)


def _lines(text: str) -> List[_Line]:
    out: List[_Line] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[:len(raw) - len(raw.lstrip())]:
            raise YamlError("a tab in the indentation (YAML indents with spaces)", number)
        body = _strip_comment(raw, number).rstrip()
        if not body.strip():
            continue
        if body.strip() in ("---", "...") and not out:
            continue  # a document start marker before anything else
        if body.startswith(("---", "...")):
            raise YamlError("several YAML documents in one file: give one config.yaml", number)
        out.append((number, len(body) - len(body.lstrip(" ")), body.strip()))
    return out


def _strip_comment(raw: str, number: int) -> str:
    quote = ""
    for n, c in enumerate(raw):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#" and (n == 0 or raw[n - 1] in " \t"):
            return raw[:n]
    if quote:
        raise YamlError("unterminated quoted string (a string spanning lines is not read)", number)
    return raw


def _block(lines: List[_Line], i: int, indent: int, path: Path, out: Dict[Path, int]) -> Tuple[Any, int]:
    number, _, text = lines[i]
    if _is_item(text):
        return _sequence(lines, i, indent, path, out)
    return _mapping(lines, i, indent, path, out)


def _sequence(lines: List[_Line], i: int, indent: int, path: Path, out: Dict[Path, int]) -> Tuple[Any, int]:
    items: List[Any] = []
    while i < len(lines) and lines[i][1] == indent and _is_item(lines[i][2]):
        number, _, text = lines[i]
        item_path = path + (len(items),)
        out.setdefault(item_path, number)
        rest = text[1:].lstrip(" ")
        if not rest:  # "-" alone: the item is the block below
            if i + 1 >= len(lines) or lines[i + 1][1] <= indent:
                items.append(None)
                i += 1
                continue
            value, i = _block(lines, i + 1, lines[i + 1][1], item_path, out)
        elif _key_split(rest) is not None:  # "- key: value": a mapping whose keys line up after "- "
            inner = indent + (len(text) - len(rest))
            lines[i] = (number, inner, rest)
            value, i = _mapping(lines, i, inner, item_path, out)
        else:
            value = _scalar_or_flow(rest, number)
            i += 1
        items.append(value)
    if i < len(lines) and lines[i][1] > indent:
        raise YamlError("unexpected indentation", lines[i][0])
    return items, i


def _mapping(lines: List[_Line], i: int, indent: int, path: Path, out: Dict[Path, int]) -> Tuple[Any, int]:
    result: Dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent:
        number, _, text = lines[i]
        split = _key_split(text)
        if split is None:
            raise YamlError(f"expected 'key: value', found {text[:60]!r}", number)
        key, rest = split
        if key in result:
            raise YamlError(f"key {key!r} given twice", number)
        key_path = path + (key,)
        out[key_path] = number
        i += 1
        if rest:
            result[key] = _scalar_or_flow(rest, number)
        elif i < len(lines) and (lines[i][1] > indent or (lines[i][1] == indent and _is_item(lines[i][2]))):
            result[key], i = _block(lines, i, lines[i][1], key_path, out)
        else:
            result[key] = None
    if i < len(lines) and lines[i][1] > indent:
        raise YamlError("unexpected indentation", lines[i][0])
    return result, i


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _key_split(text: str) -> Optional[Tuple[str, str]]:
    """"key: rest" -> (key, rest); None when the text is not a mapping entry."""
    if text[:1] in "\"'":
        end = text.find(text[0], 1)
        if end < 0 or not text[end + 1:].startswith(":"):
            return None
        key, rest = text[1:end], text[end + 2:]
    else:
        m = re.match(r"([^\s:\[\]{},#][^:]*?):(?:\s|$)", text + " ")
        if m is None or text.startswith(("[", "{")):
            return None
        key, rest = m.group(1).strip(), text[m.end(1) + 1:]
    if rest and not rest.startswith(" "):
        return None
    return key, rest.strip()


def _scalar_or_flow(text: str, number: int) -> Any:
    value, end = _value(text, 0, number, flow=False)
    if text[end:].strip():
        raise YamlError(f"unexpected text after the value: {text[end:].strip()[:40]!r}", number)
    return value


def _value(text: str, i: int, number: int, flow: bool) -> Tuple[Any, int]:
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        raise YamlError("a value is missing", number)
    c = text[i]
    if c == "[":
        return _flow_list(text, i + 1, number)
    if c == "{":
        return _flow_map(text, i + 1, number)
    if c in "\"'":
        end = text.find(c, i + 1)
        if end < 0:
            raise YamlError("unterminated quoted string", number)
        body = text[i + 1:end]
        if c == '"' and "\\" in body:
            raise YamlError("escape sequences in double-quoted strings are not read here", number)
        return body, end + 1
    stop = ",]}" if flow else ""
    end = i
    while end < len(text) and text[end] not in stop:
        end += 1
    word = text[i:end].strip()
    if word.startswith(_PLAIN_BAD):
        raise YamlError(f"{word[:40]!r}: YAML anchors, aliases, tags and block scalars are not read here", number)
    return _plain(word), end


def _plain(word: str) -> Any:
    low = word.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    if _INT.match(word):
        return int(word)
    return word  # 0x… stays text: mig-parted reads device-filter entries into strings, quoted or not


def _flow_list(text: str, i: int, number: int) -> Tuple[Any, int]:
    items: List[Any] = []
    while True:
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "]":
            return items, i + 1
        value, i = _value(text, i, number, flow=True)
        items.append(value)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == ",":
            i += 1
        elif i >= len(text) or text[i] != "]":
            raise YamlError("a [...] list must close on its line", number)


def _flow_map(text: str, i: int, number: int) -> Tuple[Any, int]:
    result: Dict[str, Any] = {}
    while True:
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "}":
            return result, i + 1
        colon = text.find(":", i)
        if colon < 0:
            raise YamlError("a {...} map must close on its line", number)
        key = text[i:colon].strip().strip("\"'")
        value, i = _value(text, colon + 1, number, flow=True)
        result[key] = value
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == ",":
            i += 1
        elif i >= len(text) or text[i] != "}":
            raise YamlError("a {...} map must close on its line", number)
