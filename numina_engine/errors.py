"""Errors that reach users: each message says what is wrong and what to do."""


class UserInputError(ValueError):
    """A bad argument, prompt, size or count given by the user."""


class CheckpointError(ValueError):
    """A checkpoint folder or file that is missing, incomplete or malformed."""
