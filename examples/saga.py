"""A trip booking saga: each booking has its compensation, run in reverse on a terminal error.

    python examples/saga.py [DIR]

DIR must be a new or empty folder (a temporary one if omitted): the demo starts afresh, and
deletes nothing it did not create.

This is Restate's sagas sample on torpor. A ``Trip`` run books a flight, a car and a hotel, each
a step. Before each booking it registers the compensation that undoes it (before, because a
booking call that fails may still have booked: cancelling is safe either way). A refusal that
no retry can change is an ``actors.TerminalError``: the hotel has no rooms. The run catches
it, runs the compensations in reverse order, each a step, and raises it again: the run fails
at once, terminally, and ``run.result()`` raises ``actors.RunFailedError`` naming it.

A transient failure is different: the car rental's API times out twice, and its step, with an
``actors.Retry`` policy, tries again; the terminal error is never retried, neither by its step
nor by the run's own retry policy.

1. a trip to Lisbon: the car API times out twice, then everything is booked;
2. a trip to Oslo: the hotel is full; the car and the flight are cancelled, once each.

The travel services are fakes that keep their bookings in ``BOOKINGS`` and count their calls in
``CALLS``: what is booked in the end is what the trips hold, nothing more.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import trio

import actors

#: Live bookings at the travel services, by booking id.
BOOKINGS: dict[str, str] = {}
#: Calls the travel services got, by name (steps run in worker threads).
CALLS: Counter[str] = Counter()
#: Timeouts the car rental's API has left to give.
CAR_TIMEOUTS = [2]
FULL_HOTELS = {"Oslo Grand"}
_LOCK = threading.Lock()

#: A step's policy for calls to the travel services: transient failures are retried.
TRAVEL_RETRY = actors.Retry(max_attempts=5, initial_delay=0.05)


class NoRooms(actors.TerminalError):
    """The hotel is full: trying again will not free a room."""


def book(kind: str, booking_id: str, what: str) -> str:
    with _LOCK:
        CALLS[f"book {kind}"] += 1
        if kind == "car" and CAR_TIMEOUTS[0]:
            CAR_TIMEOUTS[0] -= 1
            raise TimeoutError("car rental API timed out")  # transient: the step retries
        if kind == "hotel" and what in FULL_HOTELS:
            raise NoRooms(f"no rooms at {what}")  # terminal: no retry
        BOOKINGS[booking_id] = f"{kind}: {what}"
        return booking_id


def cancel(kind: str, booking_id: str) -> bool:
    """Undo a booking; cancelling one that was never made does nothing (and says so)."""
    with _LOCK:
        CALLS[f"cancel {kind}"] += 1
        return BOOKINGS.pop(booking_id, None) is not None


class Trip(actors.Workflow, name="examples.Trip"):
    """Book a flight, a car and a hotel, or none of them."""

    # The run's own policy: a plain exception escaping `run` would be retried; a terminal one
    # is not.
    retry = actors.Retry(max_attempts=3, initial_delay=0.1)

    async def run(self, flight: str, car: str, hotel: str) -> dict[str, str]:
        compensations: list[tuple[str, str]] = []
        booked: dict[str, str] = {}
        try:
            for kind, what in [("flight", flight), ("car", car), ("hotel", hotel)]:
                booking_id = f"{self.key}-{kind}"
                compensations.append((kind, booking_id))  # before: the call may book and fail
                booked[kind] = await self.step(kind, TRAVEL_RETRY, book, kind, booking_id, what)
        except actors.TerminalError:
            for kind, booking_id in reversed(compensations):
                await self.step(f"cancel {kind}", cancel, kind, booking_id)
            raise
        return booked


async def demo(folder: Path) -> None:
    async with actors.open_runtime(folder, types=[Trip]) as rt:
        print("1. a trip to Lisbon")
        lisbon = await rt.start(Trip.run, "TP 1350", "compact", "Lisbon Palace", id="trip-lisbon")
        print(f"  result: {await lisbon.result()}")
        print(f"  car bookings tried: {CALLS['book car']} (two timeouts, retried by the step)")
        print(f"  step retries: {rt.statistics().step_retries}")

        print("2. a trip to Oslo, whose hotel is full")
        oslo = await rt.start(Trip.run, "SK 4411", "estate", "Oslo Grand", id="trip-oslo")
        try:
            await oslo.result()
        except actors.RunFailedError as error:
            print(f"  the run failed: {error.error_type}: {error.error_message}")
        status = await oslo.status()
        print(f"  steps: {[(step.name, step.status) for step in status.steps]}")
        print(f"  run status: {status.state}, {status.error}")
        for letter in await rt.dead_letters(oslo.ref):
            attempts = f"{letter.attempts} attempt(s)"
            print(f"  dead letter: {letter.method}, reason {letter.reason}, {attempts}")

    calls = dict(sorted(CALLS.items()))
    print(f"calls: {calls}")
    print(f"done: bookings held: {sorted(BOOKINGS.values())}")


def new_folder(arg: str | None) -> Path:
    """DIR, or a new temporary folder. Refuse a folder that is not empty: the demo starts afresh."""
    if arg is None:
        return Path(tempfile.mkdtemp()) / "torpor"
    folder = Path(arg)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        sys.exit(f"{folder} is not empty: this demo starts afresh; give a new or empty folder")
    return folder


def main() -> None:
    folder = new_folder(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"runtime directory: {folder}")
    trio.run(demo, folder)


if __name__ == "__main__":
    main()
