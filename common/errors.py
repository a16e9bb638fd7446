"""The one error type vpipe raises for bad input.

Library code raises `VpipeError` with a message that names the problem and the fix; the command
line prints that message as one line and exits with status 2. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class VpipeError(Exception):
    """Bad input that the user can fix: the message says what is wrong and what to do."""
