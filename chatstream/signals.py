"""The app's public signals."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent exactly once per assistant reply, whatever way it ended, with ``message``
#: (the finalised ``Message``). The hook for business work: billing, analytics.
reply_finished = Signal()
