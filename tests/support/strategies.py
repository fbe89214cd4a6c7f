"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from hypothesis import strategies as st

from tests.support.agents import Mood, Point, Tag

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.datetimes(),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.uuids().map(lambda u: uuid.UUID(bytes=u.bytes)),
    st.builds(Point, st.integers(), st.integers()),
    st.decimals(allow_nan=False),
    st.sampled_from(Mood),
    st.builds(Tag, st.text(), st.decimals(allow_nan=False), st.none() | st.integers()),
)

hashable = st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.binary())

#: Values a message may carry: nested builtins, datetime values, Decimals, UUIDs, and registered
#: attrs classes, enums and dataclasses (``Point``, ``Mood``, ``Tag``).
message_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
        st.frozensets(hashable, max_size=4),
        st.sets(hashable, max_size=4),
    ),
    max_leaves=20,
)

#: Valid actor keys.
keys = st.text(min_size=1, max_size=64).filter(lambda k: "\0" not in k)
