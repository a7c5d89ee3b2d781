"""migd._record behaves like dataclasses where migd relies on it: the same class written with each must agree."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import pytest

from migd import _record


def _pair(frozen: bool):
    made = []
    for mod in (dataclasses, _record):
        @mod.dataclass(frozen=frozen)
        class Point:
            x: int
            y: int = 0
            tags: List[str] = mod.field(default_factory=tuple if frozen else list)
            note: Optional[str] = None

            def norm(self) -> int:
                return abs(self.x) + abs(self.y)

        made.append(Point)
    return made


@pytest.mark.parametrize("frozen", [True, False])
def test_record_agrees_with_dataclasses(frozen):
    for cls in _pair(frozen):
        t = ("t",) if frozen else ["t"]
        a, b, c = cls(1, 2), cls(1, 2), cls(1, 3, t)
        assert a == b and a != c and a.norm() == 3
        assert repr(c).endswith(f"Point(x=1, y=3, tags={t!r}, note=None)")
        assert cls(5).tags == type(t)()
        if not frozen:
            assert cls(5).tags is not cls(5).tags  # a fresh default per instance
        assert (a == object()) is False  # NotImplemented, then identity: never an exception
        if frozen:
            assert hash(a) == hash(b) and len({a, b, c}) == 2
            with pytest.raises(AttributeError):
                a.x = 9  # FrozenInstanceError is an AttributeError in both
        else:
            with pytest.raises(TypeError):
                hash(a)  # eq without frozen: unhashable, as dataclasses
            a.x = 9
            assert a.x == 9
    D, R = _pair(True)  # noqa: N806 (two classes: a dataclass and a record)
    assert _record.replace(R(1, 2), y=7) == R(1, 7) and dataclasses.replace(D(1, 2), y=7) == D(1, 7)
    with pytest.raises(TypeError):
        _record.replace(R(1), z=1)
    assert _record.asdict(R(1, 2, ("a",))) == dataclasses.asdict(D(1, 2, ("a",)))


def test_records_of_different_classes_with_equal_fields_are_not_equal():
    @_record.dataclass(frozen=True)
    class A:
        v: Tuple[int, ...]

    @_record.dataclass(frozen=True)
    class B:
        v: Tuple[int, ...]

    assert A((1,)) != B((1,)) and A((1,)) == A((1,))
    assert _record.asdict({"k": [A((1,))]}) == {"k": [{"v": (1,)}]}
