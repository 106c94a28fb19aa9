"""secondkey: action-level approvals for AI agents.

``Client`` / ``AsyncClient`` cover the gateway's REST API; ``client.guard``
and ``client.guarded`` put an approval in front of any code: it runs once,
only after an allow or a human's approval, and its result is recorded in the
gateway's signed log. Framework integrations live in
``secondkey.integrations``.
"""

from ._version import __version__
from .client import AsyncClient, AsyncGuard, Client, Guard
from .errors import *  # noqa: F403
from .errors import __all__ as _errors
from .guard import Authorization
from .jcs import JcsError, canonicalize, digest
from .models import *  # noqa: F403
from .models import __all__ as _models

__all__ = ["__version__", "Client", "AsyncClient", "Guard", "AsyncGuard", "Authorization", "JcsError", "canonicalize", "digest"]
__all__ += _errors + _models
