"""The one settings object: ``CHATSTREAM`` merged over ``DEFAULTS``, validated, cached.

Nothing else in the app reads our keys from ``django.conf.settings``; the cache is
dropped when ``setting_changed`` fires so ``override_settings`` works in tests.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from chatstream.providers.base import Provider

DEMO_BACKEND = "chatstream.providers.demo.DemoProvider"
MEMORY_LOG_BACKEND = "chatstream.replylog.memory.MemoryReplyLog"

DEFAULTS: dict[str, Any] = {
    # name -> {"BACKEND": dotted path, "OPTIONS": client kwargs, "MODEL": default model}
    "CONNECTIONS": {"default": {"BACKEND": DEMO_BACKEND, "OPTIONS": {}, "MODEL": ""}},
    # {"BACKEND": dotted path, "LOCATION": url, "OPTIONS": {}}
    "REPLY_LOG": {"BACKEND": MEMORY_LOG_BACKEND, "LOCATION": "", "OPTIONS": {}},
    "CHECKPOINT_INTERVAL": 5.0,
    "KEEPALIVE_INTERVAL": 15.0,
    "FLUSH_INTERVAL": 0.05,
    "FLUSH_INTERVAL_MAX": 0.2,
    "LOG_TTL": 600.0,
    "RETRY_MS": 3000,
    "DISCONNECT_POLICY": "continue",
    "DISCONNECT_GRACE": 30.0,
    "MAX_CONTENT_LENGTH": 16000,
    "ALLOW_ANONYMOUS": False,
    "MESSAGES_PER_MINUTE": 20,
    "MAX_CONCURRENT_REPLIES": 3,
    "DAILY_TOKEN_QUOTA": 0,
    "DAILY_COST_LIMIT": 0,
    "SHUTDOWN_GRACE": 5.0,
    "FINALISE_RETRY": 60.0,
    "SWEEP_INTERVAL": 60.0,
    "CACHE_ALIAS": "default",
}

_NUMBERS = (
    "CHECKPOINT_INTERVAL",
    "KEEPALIVE_INTERVAL",
    "FLUSH_INTERVAL",
    "FLUSH_INTERVAL_MAX",
    "LOG_TTL",
    "RETRY_MS",
    "DISCONNECT_GRACE",
    "MAX_CONTENT_LENGTH",
    "MESSAGES_PER_MINUTE",
    "MAX_CONCURRENT_REPLIES",
    "DAILY_TOKEN_QUOTA",
    "DAILY_COST_LIMIT",
    "SHUTDOWN_GRACE",
    "FINALISE_RETRY",
    "SWEEP_INTERVAL",
)

DisconnectPolicy = Literal["continue", "cancel"]


@dataclass(frozen=True, eq=False)  # hashed by identity: providers are cached per connection
class Connection:
    name: str
    backend: str
    options: Mapping[str, Any]
    model: str
    #: The most history a reply on this connection sends; ``None``: by the model's name.
    context_tokens: int | None = None

    @property
    def is_demo(self) -> bool:
        return self.backend == DEMO_BACKEND


@dataclass(frozen=True)
class ReplyLogConfig:
    backend: str
    location: str
    options: Mapping[str, Any]


@dataclass(frozen=True, eq=False)  # hashed by identity: caches key on it
class ChatstreamSettings:
    connections: Mapping[str, Connection]
    reply_log: ReplyLogConfig
    checkpoint_interval: float
    keepalive_interval: float
    flush_interval: float
    #: The longest a loaded process lets a reader wait between frames (chatstream.pacing).
    flush_interval_max: float
    log_ttl: float
    retry_ms: int
    disconnect_policy: DisconnectPolicy
    disconnect_grace: float
    max_content_length: int
    allow_anonymous: bool
    messages_per_minute: int
    max_concurrent_replies: int
    daily_token_quota: int
    #: Money an owner may spend a UTC day, in the prices' currency (0: no limit).
    daily_cost_limit: float
    shutdown_grace: float
    #: Seconds a reply's generation keeps retrying its row's final write (the log has it).
    finalise_retry: float
    #: Seconds between two sweeps for orphaned replies (0: none but at start-up).
    sweep_interval: float
    cache_alias: str

    def connection(self, name: str) -> Connection:
        try:
            return self.connections[name]
        except KeyError:
            raise ImproperlyConfigured(
                f"CHATSTREAM['CONNECTIONS'] has no connection named {name!r}; "
                f"known: {', '.join(sorted(self.connections))}."
            ) from None


def _import(path: Any, key: str) -> type:
    if not isinstance(path, str) or not path:
        raise ImproperlyConfigured(f"CHATSTREAM{key}['BACKEND'] must be a dotted path string.")
    try:
        found: type = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"CHATSTREAM{key}['BACKEND'] = {path!r} cannot be imported: {exc}"
        ) from exc
    return found


def _connection(name: str, spec: Any) -> Connection:
    key = f"['CONNECTIONS'][{name!r}]"
    if not isinstance(spec, Mapping):
        raise ImproperlyConfigured(f"CHATSTREAM{key} must be a dict with a 'BACKEND'.")
    unknown = set(spec) - {"BACKEND", "OPTIONS", "MODEL", "CONTEXT_TOKENS"}
    if unknown:
        raise ImproperlyConfigured(
            f"CHATSTREAM{key} has unknown keys: {', '.join(sorted(unknown))}."
        )
    backend = spec.get("BACKEND", "")
    cls = _import(backend, key)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ImproperlyConfigured(
            f"CHATSTREAM{key}['BACKEND'] = {backend!r} is not a chatstream Provider."
        )
    options = spec.get("OPTIONS") or {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"CHATSTREAM{key}['OPTIONS'] must be a dict.")
    model = spec.get("MODEL") or ""
    if not isinstance(model, str):
        raise ImproperlyConfigured(f"CHATSTREAM{key}['MODEL'] must be a string.")
    context = spec.get("CONTEXT_TOKENS")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int)):
        raise ImproperlyConfigured(f"CHATSTREAM{key}['CONTEXT_TOKENS'] must be a whole number.")
    return Connection(
        name=name, backend=backend, options=dict(options), model=model, context_tokens=context
    )


def build(user: Mapping[str, Any] | None) -> ChatstreamSettings:
    """Merge ``user`` over ``DEFAULTS`` and validate every key, naming the bad one."""
    user = dict(user or {})
    unknown = set(user) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown CHATSTREAM setting(s): {', '.join(sorted(unknown))}. "
            f"Known: {', '.join(sorted(DEFAULTS))}."
        )
    merged = {**DEFAULTS, **user}
    for key in _NUMBERS:
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ImproperlyConfigured(
                f"CHATSTREAM['{key}'] must be a non-negative number, not {value!r}."
            )
    if merged["DISCONNECT_POLICY"] not in ("continue", "cancel"):
        raise ImproperlyConfigured(
            "CHATSTREAM['DISCONNECT_POLICY'] must be 'continue' or 'cancel', "
            f"not {merged['DISCONNECT_POLICY']!r}."
        )
    connections = merged["CONNECTIONS"]
    if not isinstance(connections, Mapping) or not connections:
        raise ImproperlyConfigured("CHATSTREAM['CONNECTIONS'] must be a non-empty dict.")
    if "default" not in connections:
        raise ImproperlyConfigured("CHATSTREAM['CONNECTIONS'] needs a 'default' connection.")
    log_spec = {**DEFAULTS["REPLY_LOG"], **(merged["REPLY_LOG"] or {})}
    unknown = set(log_spec) - {"BACKEND", "LOCATION", "OPTIONS"}
    if unknown:
        raise ImproperlyConfigured(
            f"CHATSTREAM['REPLY_LOG'] has unknown keys: {', '.join(sorted(unknown))}."
        )
    _import(log_spec["BACKEND"], "['REPLY_LOG']")
    return ChatstreamSettings(
        connections={name: _connection(name, spec) for name, spec in connections.items()},
        reply_log=ReplyLogConfig(
            backend=log_spec["BACKEND"],
            location=log_spec["LOCATION"] or "",
            options=dict(log_spec["OPTIONS"] or {}),
        ),
        checkpoint_interval=float(merged["CHECKPOINT_INTERVAL"]),
        keepalive_interval=float(merged["KEEPALIVE_INTERVAL"]),
        flush_interval=float(merged["FLUSH_INTERVAL"]),
        flush_interval_max=float(merged["FLUSH_INTERVAL_MAX"]),
        log_ttl=float(merged["LOG_TTL"]),
        retry_ms=int(merged["RETRY_MS"]),
        disconnect_policy=merged["DISCONNECT_POLICY"],
        disconnect_grace=float(merged["DISCONNECT_GRACE"]),
        max_content_length=int(merged["MAX_CONTENT_LENGTH"]),
        allow_anonymous=bool(merged["ALLOW_ANONYMOUS"]),
        messages_per_minute=int(merged["MESSAGES_PER_MINUTE"]),
        max_concurrent_replies=int(merged["MAX_CONCURRENT_REPLIES"]),
        daily_token_quota=int(merged["DAILY_TOKEN_QUOTA"]),
        daily_cost_limit=float(merged["DAILY_COST_LIMIT"]),
        shutdown_grace=float(merged["SHUTDOWN_GRACE"]),
        finalise_retry=float(merged["FINALISE_RETRY"]),
        sweep_interval=float(merged["SWEEP_INTERVAL"]),
        cache_alias=str(merged["CACHE_ALIAS"]),
    )


@functools.cache
def get_settings() -> ChatstreamSettings:
    return build(getattr(django_settings, "CHATSTREAM", None))


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "CHATSTREAM":
        get_settings.cache_clear()
