"""Every chatstream error, each with a stable ``code`` and the HTTP ``status`` it maps to."""

from __future__ import annotations


class ChatstreamError(Exception):
    """Base class: ``code`` is for programs, the message is for people."""

    code = "error"
    status = 400
    default_message = "The request could not be processed."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        self.message = message or self.default_message
        if code is not None:
            self.code = code
        super().__init__(self.message)

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadRequest(ChatstreamError):
    """Raised when a request body or parameter is malformed or fails validation."""

    code = "invalid_request"


class InvalidOffset(BadRequest):
    """Raised when a resume offset is not an integer within the reply's text."""

    code = "invalid_offset"


class ContentTooLong(BadRequest):
    """Raised when a message is longer than ``MAX_CONTENT_LENGTH``."""

    code = "content_too_long"


class NotAuthenticated(ChatstreamError):
    """Raised when nobody is signed in and anonymous chat is off."""

    code = "not_authenticated"
    status = 403
    default_message = "Sign in to chat."


class CsrfFailed(ChatstreamError):
    """Raised when an unsafe request lacks a valid CSRF token."""

    code = "csrf_failed"
    status = 403


class Forbidden(ChatstreamError):
    """Raised when the caller may not see this: metrics without a staff session or the token."""

    code = "forbidden"
    status = 403
    default_message = "You may not see this."


class NotFound(ChatstreamError):
    """Raised for unknown ids and for anything that is not the caller's."""

    code = "not_found"
    status = 404
    default_message = "Not found."


class MethodNotAllowed(ChatstreamError):
    """Raised when an endpoint does not accept the request's method."""

    code = "method_not_allowed"
    status = 405

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed
        super().__init__(f"Allowed methods: {', '.join(allowed)}.")


class ReplyInProgress(ChatstreamError):
    """Raised when a conversation already has a reply streaming."""

    code = "reply_in_progress"
    status = 409
    default_message = "A reply is already streaming in this conversation; stop it or wait."


class Conflict(ChatstreamError):
    """Raised when the request does not fit the current state (e.g. regenerate an old reply)."""

    code = "conflict"
    status = 409


class RateLimited(ChatstreamError):
    """Raised when the caller is over a rate limit; ``retry_after`` is in seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(message, code=code)


class CostLimitExceeded(RateLimited):
    """Raised when an owner's daily cost limit is spent (before or during a reply)."""

    code = "cost_limit_exceeded"

    def __init__(
        self,
        message: str = "Today's spending limit is reached; it resets at midnight UTC.",
        *,
        retry_after: int = 3600,
    ) -> None:
        super().__init__(message, retry_after=retry_after)


class TokenQuotaExceeded(RateLimited):
    """Raised when an owner's daily token quota is used up (before or during a reply)."""

    code = "quota_exceeded"

    def __init__(self, message: str | None = None, *, retry_after: int = 3600) -> None:
        super().__init__(
            message or "The daily token quota is used up; it resets at midnight UTC.",
            retry_after=retry_after,
        )


class ServiceUnavailable(ChatstreamError):
    """Raised when a backing service (the reply log) cannot be reached."""

    code = "service_unavailable"
    status = 503


class DatabaseUnavailable(ServiceUnavailable):
    """Raised when the database is locked past its timeout or unreachable; nothing was stored."""

    code = "database_unavailable"
    default_message = "The database is busy or unreachable; try again shortly."


class ReplyLogUnavailable(ServiceUnavailable):
    """Raised when the reply log (Redis) cannot be reached; stored data is untouched."""

    code = "log_unavailable"
    default_message = "Live replies are unavailable right now; try again shortly."


class UpstreamError(ChatstreamError):
    """Raised by providers when the model's server fails; the message never holds secrets."""

    code = "upstream_error"
    status = 502
    default_message = "The model's server returned an error."


class LeaseLost(ChatstreamError):
    """Raised to a reply's writer once another worker took the reply over (fenced out)."""

    code = "lease_lost"
    default_message = "Another worker took this reply over."
