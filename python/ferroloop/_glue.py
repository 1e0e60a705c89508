"""Small helpers the native core calls back into."""

from __future__ import annotations

import sys
from asyncio import format_helpers
from traceback import StackSummary


def extract_source_traceback() -> StackSummary:
    """The stack of the code that scheduled a handle (debug mode).

    The native scheduling methods add no Python frame, so the caller of this
    function is the user's code, which is the frame asyncio records.
    """
    return format_helpers.extract_stack(sys._getframe(1))
