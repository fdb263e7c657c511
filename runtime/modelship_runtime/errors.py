"""One error base for everything a client or the operator can be told.

Every failure the runtime answers is a :class:`ModelshipError` carrying its HTTP status,
so one exception handler turns it into ``{"error": "..."}`` (the Open Inference
Protocol's error body, used on every route) and nothing reaches the client as a 500 by
accident. The tree:

* ModelshipError
  * BadRequest (400): wrong shape, wrong feature count, non-numeric or non-finite
    values, empty or oversized batch, V2 shape/datatype mismatch
    * NotJSON: a body that does not parse as JSON; answered 400 when it was declared
      JSON (or not declared), 415 when declared as something else (see
      :func:`modelship_runtime.protocols.not_json`), with a curl line that works
  * Unauthorized (401): missing or wrong API key
  * ModelNotFound (404): a model name this server does not serve
  * PayloadTooLarge (413): body over ``max_body_bytes``
  * UnsupportedMediaType (415): a body declared as another type that is not JSON either
  * ModelNotReady (503): the model is not loaded yet
  * ModelLoadError: the model directory cannot be loaded (startup, not HTTP)
    * UntrustedArtifact: the artifact is refused by the runtime's trust settings (a
      pickle with ``allow_pickle`` off, skops types it does not trust, a path that leaves
      the model directory); the console script exits 8 (docs/cli.md)
  * PullError: the registry refused or could not be reached (CLI, not HTTP); ``kind``
    says which, and the console script's exit code follows it (docs/cli.md)
"""

from __future__ import annotations

from typing import Literal


class ModelshipError(Exception):
    """Base of all runtime errors; ``status_code`` is what HTTP answers."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ModelshipError):
    """The request cannot be predicted; the message names what is wrong."""

    status_code = 400


class NotJSON(BadRequest):
    """The body does not parse as JSON (the message says where it broke)."""


class Unauthorized(ModelshipError):
    """No API key, or an unknown one."""

    status_code = 401


class ModelNotFound(ModelshipError):
    """The request names a model this server does not serve."""

    status_code = 404


class PayloadTooLarge(ModelshipError):
    """The body is larger than the configured maximum."""

    status_code = 413


class UnsupportedMediaType(ModelshipError):
    """The body is declared as something other than JSON, and is not JSON either."""

    status_code = 415


class ModelNotReady(ModelshipError):
    """The model is not loaded (yet)."""

    status_code = 503


class ModelLoadError(ModelshipError):
    """A model directory that cannot be loaded (missing file, refused format)."""


class UntrustedArtifact(ModelLoadError):
    """The artifact asks for something the runtime does not trust; the message says what
    and which setting would trust it."""


PullKind = Literal["usage", "not_found", "auth", "unreachable", "untrusted"]


class PullError(ModelshipError):
    """Pulling from the registry failed; ``kind`` says why. Only ``unreachable`` is
    ``transient`` (a retry may help)."""

    def __init__(self, message: str, *, kind: PullKind) -> None:
        super().__init__(message)
        self.kind: PullKind = kind
        self.transient = kind == "unreachable"
