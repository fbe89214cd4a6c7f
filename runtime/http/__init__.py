"""The HTTP gateway (DESIGN §12): ``gateway.py``, the ASGI application (Starlette) behind
``actors.http.app``; ``values.py``, JSON to annotated types and back (cattrs); ``client.py``,
``actors.connect``, refs and runs of another process over a gateway (httpx).

Only ``gateway.py`` and the client's connection import the HTTP libraries (the ``http``
extra); ``import actors`` imports none of them.
"""
