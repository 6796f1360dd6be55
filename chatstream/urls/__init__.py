"""Everything: ``include("chatstream.urls")`` mounts the chat page and the API.

``chatstream.urls.api`` (the JSON + SSE API alone) and ``chatstream.urls.page`` let a
host take only what it wants; all three share the ``chatstream`` namespace.
"""

from __future__ import annotations

from chatstream.urls import api, page

app_name = "chatstream"

urlpatterns = [*page.urlpatterns, *api.urlpatterns]
