"""Immutable records: what typing.NamedTuple gives nsctl, without typing or namedtuple.

Slurm starts a fresh interpreter for every job's Prolog and Epilog, and their run time is added
to every job's: importing ``typing`` costs one ~3 ms, and each namedtuple class an ``exec``. A
``Record`` subclass declares its fields as annotations, in order, with defaults as class
attributes, and gets ``__init__`` (positional or by name), ``_replace``, ``_asdict``, equality,
hashing, iteration and a repr, as NamedTuple does. Instances cannot be changed.
"""

from __future__ import annotations


class Record:
    __slots__ = ()
    _fields: tuple = ()
    _defaults: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = tuple(cls.__dict__.get("__annotations__", {}))
        cls._fields = tuple(f for f in cls._fields if f not in own) + own
        defaults = dict(cls._defaults)
        defaults.update((f, cls.__dict__[f]) for f in own if f in cls.__dict__)
        cls._defaults = defaults

    def __init__(self, *args, **kwargs):
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} fields, got {len(args)}")
        values = dict(zip(fields, args))
        if kwargs:
            defaults = self._defaults
            for name, value in kwargs.items():
                if name in values or (name not in defaults and name not in fields):
                    raise TypeError(f"{type(self).__name__}: unexpected or repeated field {name!r}")
                values[name] = value
        if len(values) < len(fields):
            for name in fields:
                if name not in values:
                    if name not in self._defaults:
                        raise TypeError(f"{type(self).__name__}: missing field {name!r}")
                    values[name] = self._defaults[name]
        object.__setattr__(self, "__dict__", values)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple:
        return tuple(self.__dict__[f] for f in self._fields)

    def __iter__(self):
        return iter(self._values())

    def __eq__(self, other):
        return type(other) is type(self) and other._values() == self._values()

    def __hash__(self):
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        inside = ", ".join(f"{f}={self.__dict__[f]!r}" for f in self._fields)
        return f"{type(self).__name__}({inside})"

    def _replace(self, **changes):
        return type(self)(**{**self.__dict__, **changes})

    def _asdict(self) -> dict:
        return dict(self.__dict__)
