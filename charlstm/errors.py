"""The one error type users see.

Anything raised as `CharlstmError` is a problem with the user's input or
environment; the CLI prints its message as a single line and exits non-zero.
Every other exception is a bug and stays loud.
"""


class CharlstmError(Exception):
    """A user-facing failure: the message says what is wrong and what to do."""

    exit_code = 1
    # Under MPI: raised alike on every rank (so rank 0 alone reports it), not on one
    # rank while the others wait for it (see parallel.py).
    on_every_rank = False
