"""nsctl.record.Record: what the hot path uses instead of typing.NamedTuple behaves like it."""

from __future__ import annotations

import pytest

from nsctl.record import Record


class Point(Record):
    x: int
    y: int = 0
    label: str = "p"


class Point3(Point):
    z: int = 9


def test_fields_positionally_by_name_and_from_defaults():
    assert Point(1, 2, "a")._asdict() == {"x": 1, "y": 2, "label": "a"}
    assert Point(1, label="b")._asdict() == {"x": 1, "y": 0, "label": "b"}
    assert Point(x=3) == Point(3, 0, "p")
    assert tuple(Point(1, 2)) == (1, 2, "p")
    assert Point3(1, z=4)._fields == ("x", "y", "label", "z")
    assert tuple(Point3(1, z=4)) == (1, 0, "p", 4)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), {}),  # x has no default
        ((1, 2, "a", 4), {}),  # too many
        ((1,), {"x": 2}),  # x twice
        ((1,), {"w": 2}),  # no such field
        ((), {"y": 1}),  # x still missing
    ],
)
def test_wrong_fields_are_refused(args, kwargs):
    with pytest.raises(TypeError):
        Point(*args, **kwargs)


def test_immutable_hashable_and_replaceable():
    point = Point(1, 2)
    with pytest.raises(AttributeError):
        point.x = 5
    with pytest.raises(AttributeError):
        del point.y
    assert point._replace(y=7) == Point(1, 7)
    assert point == Point(1, 2) and hash(point) == hash(Point(1, 2))
    assert point != Point3(1, 2) and point != (1, 2, "p")
    assert repr(point) == "Point(x=1, y=2, label='p')"
