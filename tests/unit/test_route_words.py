"""Actor definitions the HTTP gateway depends on: route words refused, http_create checked."""

from __future__ import annotations

import pytest

import actors


def test_a_handler_named_like_a_gateway_route_is_refused_at_definition() -> None:
    """A handler called signals, streams or watch could not be told from the gateway's routes."""
    for word in ("signals", "streams", "watch"):
        with pytest.raises(TypeError, match=f"{word!r} is a word of the HTTP gateway's routes"):
            type("Bad", (actors.Actor,), {word: _handler})


def test_a_route_word_is_refused_as_a_persisted_name_too() -> None:
    """@actors.handler(name="watch") is refused; a method named watch with another name is fine."""
    with pytest.raises(ValueError, match="word of the HTTP gateway's routes"):
        actors.handler(name="watch")

    class Fine(actors.Actor, name="FineRouteWords"):
        @actors.handler(name="observe")
        async def watch(self) -> None: ...

    assert "observe" in Fine.__torpor_spec__.handlers


def test_http_create_must_be_a_bool() -> None:
    """http_create = False marks a type not creatable over HTTP; another value is a TypeError."""
    with pytest.raises(TypeError, match="http_create must be True or False"):
        type("Bad", (actors.Actor,), {"http_create": "no"})

    class Closed(actors.Actor, name="ClosedOverHttp"):
        http_create = False

    assert Closed.http_create is False


async def _handler(self: actors.Actor) -> None:
    """A handler body for the classes made above."""
