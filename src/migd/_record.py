"""A small stand-in for `dataclasses.dataclass`, for migd's plain record classes.

Why: every migd process imports ~30 record classes. `dataclasses` imports `inspect` (~6 ms) and compiles six
generated methods per frozen class (~0.5 ms each class): ~20 ms of every `migd status`, more than all NVML reads
of a GPU. Here only `__init__` is generated (one small compile per class); equality, hashing, repr and
immutability are shared functions over the field names.

Behaviour kept from dataclasses (what migd uses): fields from the class annotations in order, defaults and
`field(default_factory=...)`, `__eq__` (same class, equal fields; else NotImplemented), `__hash__` from the fields
when frozen (unhashable otherwise), `__repr__` as `Name(a=1, b=2)`, frozen instances refuse attribute assignment
(FrozenInstanceError, an AttributeError), methods the class defines itself are kept, `replace()` and `asdict()`.
Not supported (migd does not use them): inheritance between records, ordering, slots, InitVar, ClassVar fields.
mypy treats the decorator as a dataclass (PEP 681 dataclass_transform).
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda f: f

__all__ = ["dataclass", "field", "replace", "asdict", "fields", "FrozenInstanceError"]

_T = TypeVar("_T")
_C = TypeVar("_C", bound=type)
_FIELDS = "__record_fields__"


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class _Factory:
    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory


def field(*, default_factory: Callable[[], _T]) -> _T:
    """A field whose default is made per instance (`field(default_factory=list)`)."""
    return _Factory(default_factory)  # type: ignore[return-value]  # the class body sees the field's type


@overload
def dataclass(cls: _C) -> _C: ...


@overload
def dataclass(*, frozen: bool = False) -> Callable[[_C], _C]: ...


@dataclass_transform(field_specifiers=(field,))
def dataclass(cls: Optional[_C] = None, *, frozen: bool = False) -> Any:
    def wrap(c: _C) -> _C:
        return _make(c, frozen)

    return wrap if cls is None else wrap(cls)


def _make(cls: _C, frozen: bool) -> _C:
    names: List[str] = list(cls.__dict__.get("__annotations__", {}))
    params, lines = [], []
    env: Dict[str, Any] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    for n in names:
        default = cls.__dict__.get(n, _MISSING)
        if isinstance(default, _Factory):
            env[f"_f_{n}"] = default.factory
            params.append(f"{n}=_MISSING")
            value = f"_f_{n}() if {n} is _MISSING else {n}"
            delattr(cls, n)
        elif default is not _MISSING:
            env[f"_d_{n}"] = default
            params.append(f"{n}=_d_{n}")
            value = n
        else:
            params.append(n)
            value = n
        lines.append(f"  _set(self, {n!r}, {value})" if frozen else f"  self.{n} = {value}")
    src = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(lines) or "  pass")
    exec(src, env)  # noqa: S102 - generated from the class's own annotation names
    key: Callable[[Any], Any] = attrgetter(*names) if names else (lambda _: ())
    setattr(cls, _FIELDS, tuple(names))
    _define(cls, "__init__", env["__init__"])
    _define(cls, "__repr__", _repr)
    _define(cls, "__eq__", lambda self, other: key(self) == key(other) if other.__class__ is self.__class__
            else NotImplemented)
    if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:

        def _hash(self: Any) -> int:
            return hash(key(self))

        # eq without frozen: unhashable, as dataclasses; setattr because mypy refuses assigning a method
        setattr(cls, "__hash__", _hash if frozen else None)  # noqa: B010
    if frozen:
        cls.__setattr__ = _frozen_setattr  # type: ignore[method-assign,assignment]
        cls.__delattr__ = _frozen_delattr  # type: ignore[method-assign,assignment]
    return cls


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Any = _Missing()


def _define(cls: type, name: str, fn: Callable[..., Any]) -> None:
    if name not in cls.__dict__:  # a method the class writes itself wins, as with dataclasses
        fn.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, fn)


def _repr(self: Any) -> str:
    body = ", ".join(f"{n}={getattr(self, n)!r}" for n in getattr(self, _FIELDS))
    return f"{type(self).__qualname__}({body})"


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def fields(obj: Any) -> Tuple[str, ...]:
    """The field names of a record (class or instance), in order."""
    return tuple(getattr(obj, _FIELDS))


def replace(obj: _T, **changes: Any) -> _T:
    """A copy of a record with some fields changed (dataclasses.replace)."""
    values = {n: getattr(obj, n) for n in fields(obj)}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return type(obj)(**values)


def asdict(obj: Any) -> Any:
    """Records (recursively, through tuples, lists and dicts) as plain dicts (dataclasses.asdict)."""
    if hasattr(type(obj), _FIELDS):
        return {n: asdict(getattr(obj, n)) for n in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return type(obj)(asdict(v) for v in obj)
    if isinstance(obj, dict):
        return {asdict(k): asdict(v) for k, v in obj.items()}
    return obj
