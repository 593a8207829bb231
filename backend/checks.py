"""Checks of one request field's value, shared by every request type (generation, Extras): a wrong type or a
value out of range is an InvalidRequest naming the field. Booleans are not numbers, and NaN or infinity is never
within a range."""

from __future__ import annotations

from backend.errors import InvalidRequest


def check_int(value, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low} and {high}, got {value}")


def check_number(value, name: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(name, f"must be a number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low} and {high}, got {value}")
