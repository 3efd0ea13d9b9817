"""Assertions shared by several test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pipeline.errors import GeosegError


def user_error(exc_type: type[GeosegError], fn: Callable[..., Any], *args: Any) -> str:
    """Call ``fn``, expect ``exc_type`` (a GeosegError) with a one-line message; return it."""
    with pytest.raises(exc_type) as info:
        fn(*args)
    assert isinstance(info.value, GeosegError)
    message = str(info.value)
    assert "\n" not in message
    return message
