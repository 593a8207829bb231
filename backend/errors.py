"""Typed errors raised by the backend. The edges (UI, REST API) turn them into messages."""


class BackendError(Exception):
    """Base class: every error the user may see. `str(err)` is the user-facing message."""


class InvalidRequest(BackendError):
    """A request field has a bad value. `field` names it so the edge can point at it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # pickled whole (a cluster worker's error crosses to the server)
        return type(self), (self.field, self.message)


class Forbidden(BackendError):
    """A feature this server does not offer to its callers, e.g. reading or writing server folders when it is
    served beyond this machine."""


class ModelNotFound(BackendError):
    """A model, VAE or other file name that the registry does not know."""


class CheckpointError(BackendError):
    """A checkpoint file that cannot be read or understood."""


class UnsafeCheckpoint(CheckpointError):
    """A pickle checkpoint that would run code when loaded. It is refused, nothing in it runs."""


class OutOfMemory(BackendError):
    """Every memory-saving measure was tried and the device still ran out of memory."""


class PrecisionError(BackendError):
    """A model produced NaN: the precision it runs in cannot represent the picture (the message says what to do)."""


class Interrupted(BackendError):
    """The user stopped the job."""


class ServiceStopping(BackendError):
    """The server is shutting down: the job was not run (or is refused)."""


class WorkerLost(BackendError):
    """The cluster worker running a job died (twice, or with no other worker left): the job did not finish."""


class TooManyJobs(BackendError):
    """An owner has as many jobs waiting as one may (--max-queued-per-user)."""
