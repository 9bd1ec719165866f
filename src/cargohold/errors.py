"""The one error tree of cargohold.

Library code raises these and never exits or prints; only the CLI maps them to
exit codes (documented in the README) and one-line messages with a hint.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar


class CargoholdError(Exception):
    """Base of every error cargohold reports on purpose."""

    exit_code: ClassVar[int] = 1
    hint: ClassVar[str] = "run with -v for details"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.instance_hint = hint

    @property
    def kind(self) -> str:
        """A stable machine-readable name, used in --json output."""
        name = type(self).__name__
        out = []
        for i, ch in enumerate(name.removesuffix("Error")):
            if ch.isupper() and i:
                out.append("_")
            out.append(ch.lower())
        return "".join(out)

    def hint_text(self) -> str:
        return getattr(self, "instance_hint", self.hint)

    def __str__(self) -> str:
        return self.message


class InternalError(CargoholdError):
    """An unexpected exception: a bug in cargohold (exit 1)."""

    exit_code = 1
    hint = "this is a bug in cargohold: please report it with the output of the command run with -v"


class InvalidInputError(CargoholdError):
    """Malformed reference, digest, platform, manifest, spec or argument."""

    exit_code = 2
    hint = "check the argument or file named in the message"


class _InvalidInputCause(InvalidInputError):
    """An invalid input of one kind, with a hint for that kind (same exit code and --json
    ``error`` as :class:`InvalidInputError`)."""

    @property
    def kind(self) -> str:
        return "invalid_input"


class InvalidDigestError(_InvalidInputCause):
    hint = "a digest is <algorithm>:<hex>, e.g. sha256: and 64 lower-case hex digits"


class InvalidPlatformError(_InvalidInputCause):
    hint = "a platform is os/architecture[/variant], e.g. linux/amd64 or linux/arm64/v8"


class InvalidContentError(_InvalidInputCause):
    """A manifest, index, config or descriptor that does not follow the OCI / Docker specs."""

    hint = ("the registry served a malformed manifest or config: look at it with "
            "`skopeo inspect --raw docker://REF`, or push the image again with a current tool")


class UnsupportedError(InvalidInputError):
    """Well-formed input that cargohold refuses to handle (e.g. Docker schema1)."""

    exit_code = 3
    hint = "re-push the image with a current tool (OCI or Docker schema2)"


class NotFoundError(CargoholdError):
    exit_code = 4
    hint = "check the reference, tag or digest; `cargohold images ls` lists what is stored"


class UnauthorizedError(CargoholdError):
    exit_code = 5
    hint = "log in (docker login) or pass --authfile with credentials for this registry"


class DigestMismatchError(CargoholdError):
    """Content whose bytes do not match its digest or size."""

    exit_code = 6
    hint = "the registry or mirror served corrupt or tampered content; nothing was stored"


class StoreDamagedError(DigestMismatchError):
    """The store's own records are unreadable, or missing while the data they describe
    exists: never silently started afresh (a gc would then remove everything)."""

    hint = ("nothing was changed; README \"Recovering a damaged store\" says how to start "
            "a new store and fetch the images again")


class UnavailableError(CargoholdError):
    """A registry, daemon or mirror could not be reached or kept failing."""

    exit_code = 7
    hint = "check the network, the registry's health and mirrors in hosts.toml; rerun to resume"


class ConflictError(CargoholdError):
    """Something exists already, or is locked or in use."""

    exit_code = 8
    hint = "another cargohold may be running on this root, or the name is taken"


class IngestLockedError(ConflictError):
    """Another writer holds the ingest (a download of the same blob in progress)."""

    hint = "another writer holds this ingest; wait for it or abort the ingest"


class AlreadyExistsError(ConflictError):
    """The thing to create is there already (e.g. a blob committed meanwhile): often fine."""

    hint = "nothing to do: it is already present"


class OutOfSpaceError(CargoholdError):
    exit_code = 9
    hint = "free disk space or lower the reserve; what was committed is kept, rerun to go on"


class UnsafeContentError(CargoholdError):
    """A layer that tries to escape its root or bomb the disk."""

    exit_code = 10
    hint = "the layer is hostile or broken; nothing was written outside the snapshot"


class BudgetError(CargoholdError):
    exit_code = 11
    hint = "raise the budget, drop images, or mark fewer images critical"


class PartialFailureError(CargoholdError):
    """Some items of a batch failed; the others were kept."""

    exit_code = 12
    hint = "the successful images were kept; fix the failures listed above and rerun"


class TargetNotReachedError(CargoholdError):
    """evict did what it may and the free-space target is still not met."""

    exit_code = 13
    hint = "--allow-delete also deletes whole images (never critical, pinned or in use)"


class CheckFailedError(CargoholdError):
    """doctor: at least one check failed."""

    exit_code = 14
    hint = "follow the advice printed under each failed check"


class InterruptedError_(CargoholdError):
    """Stopped by a signal; work done so far is kept and a rerun resumes."""

    exit_code = 130
    hint = "rerun the same command to resume"

    @property
    def kind(self) -> str:
        return "interrupted"


def batch_error(failures: Sequence[tuple[str, CargoholdError]], total: int,
                hint: str | None = None) -> CargoholdError | None:
    """The error of a batch of ``total`` images (fetch, pull, bake) of which ``failures``
    (name, error) failed: None if none did; the error itself for a batch of one; when every
    image failed with one exit code, an error of that kind (the cause's code, not 12);
    else :class:`PartialFailureError` naming the failed images. ``hint`` replaces the
    partial failure's."""
    if not failures:
        return None
    if total == 1:
        return failures[0][1]
    names = ", ".join(name for name, _ in failures)
    first = failures[0][1]
    if len(failures) == total and len({e.exit_code for _, e in failures}) == 1:
        causes = list(dict.fromkeys(e.message for _, e in failures))
        err = copy.copy(first)
        err.message = (f"all {total} images failed: "
                       + (causes[0] if len(causes) == 1 else f"{names} ({causes[0]}; ...)"))
        err.args = (err.message,)
        return err
    return PartialFailureError(f"{len(failures)} of {total} images failed: {names}", hint=hint)


# The public name; the underscore avoids shadowing the builtin InterruptedError.
Interrupted = InterruptedError_

#: Exit codes not tied to an error class.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2

ALL_ERRORS: tuple[type[CargoholdError], ...] = (
    InternalError,
    InvalidInputError,
    UnsupportedError,
    NotFoundError,
    UnauthorizedError,
    DigestMismatchError,
    StoreDamagedError,
    UnavailableError,
    ConflictError,
    AlreadyExistsError,
    OutOfSpaceError,
    UnsafeContentError,
    BudgetError,
    PartialFailureError,
    TargetNotReachedError,
    CheckFailedError,
    InterruptedError_,
)
