"""The demo project's own views: the Prometheus metrics of this worker process.

Each worker answers with its own counts (``chatstream.metrics`` says why), so
Prometheus scrapes every worker's address, not the load balancer's.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from chatstream.exceptions import Forbidden
from chatstream.http import JsonErrorResponse


def _bearer_token(request: HttpRequest) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _may_scrape(request: HttpRequest) -> bool:
    """A bearer token equal to ``METRICS_TOKEN`` (when one is set), or a staff session."""
    expected, given = settings.METRICS_TOKEN, _bearer_token(request)
    if expected and given and hmac.compare_digest(given.encode(), expected.encode()):
        return True
    user = await request.auser()
    return user.is_active and user.is_staff


@require_safe
@login_not_required
async def metrics(request: HttpRequest) -> HttpResponse:
    if not await _may_scrape(request):
        return JsonErrorResponse(
            Forbidden("Metrics need a staff session or the metrics bearer token.")
        )
    # Rendered on the event loop: a few milliseconds, no thread per scrape.
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
