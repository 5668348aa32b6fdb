"""``hibachi serve``: an OpenAI-compatible HTTP server over hibachi's batchers.

```python
from hibachi.serve import create_app, default_embedding_model, default_language_model

app = create_app(default_language_model(), default_embedding_model())   # an ASGI app
```

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST
/v1/chat/completions``, ``POST /v1/embeddings``, ``GET /health``, ``GET
/metrics``. Needs the ``serve`` extra (FastAPI, uvicorn with httptools,
prometheus-client); ``import hibachi`` never imports this package.
"""

from __future__ import annotations

from ._app import create_app as create_app
from ._models import EmbeddingModel as EmbeddingModel
from ._models import LanguageModel as LanguageModel
from ._models import default_embedding_model as default_embedding_model
from ._models import default_language_model as default_language_model
from ._models import load_embedding_model as load_embedding_model
from ._models import load_language_model as load_language_model
from ._models import tiny_language_model as tiny_language_model
from ._server import GracefulServer as GracefulServer
from ._server import run as run
from ._server import server_for as server_for
from ._settings import Access as Access
from ._settings import ConnectionLimits as ConnectionLimits
from ._settings import RequestLimits as RequestLimits
from ._settings import ServeSettings as ServeSettings

__all__ = [
    "Access",
    "ConnectionLimits",
    "EmbeddingModel",
    "GracefulServer",
    "LanguageModel",
    "RequestLimits",
    "ServeSettings",
    "create_app",
    "default_embedding_model",
    "default_language_model",
    "load_embedding_model",
    "load_language_model",
    "run",
    "server_for",
    "tiny_language_model",
]
