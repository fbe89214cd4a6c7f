"""The HTTP gateway: a runtime's actors and runs over HTTP, as an ASGI application.

    import actors.http

    asgi = actors.http.app(rt, auth=actors.http.bearer(token))

Mount it in FastAPI or Starlette, serve it with any ASGI server, or run ``torpor serve``.
Needs the ``http`` extra: ``pip install 'torpor[http]'``. Clients in another process use
``actors.connect(url)``.
"""

from runtime.http.gateway import STATUS, RateLimit, app, bearer

from ._public import publish as _publish

__all__ = ["STATUS", "RateLimit", "app", "bearer"]

_publish(__name__, globals(), __all__)
