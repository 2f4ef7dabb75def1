"""The one exception type for user mistakes.

Library code raises :class:`UserError` for anything the user can fix (a bad CSV, a missing file, a
config typo, a mismatched checkpoint). Entry scripts catch it and print a one-line message with a
non-zero exit status, instead of a traceback. ``assert`` stays reserved for internal invariants.
"""


class UserError(Exception):
    """A problem in the user's input, reported as one line without a traceback."""
