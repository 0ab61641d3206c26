"""Exceptions with messages meant for users: what went wrong and what to do about it."""


class CurateError(Exception):
    """An error the user can act on; the CLI prints it without a traceback."""


class WeightsUnavailable(CurateError):
    """Pretrained weights could not be found locally nor downloaded (offline, gated, wrong id)."""


class StageBusy(CurateError):
    """Another process holds the lock of this stage on this dataset root."""
