"""What Voila calls back into the dashboard (``VoilaConfiguration.prelaunch_hook``, set by ``voila.py`` in the
configuration folder ``dashboard.__main__`` writes).

Voila's page shuts its kernel down when it unloads (a reload, a closed tab) with a beacon that sends the
``_xsrf`` cookie back as a form field; Voila never sets that cookie, so every reload logged a 403 for the
old kernel's shutdown in the browser's console and left the kernel to the idle culler (voila-dashboards/voila
issue 1458). Reading the handler's XSRF token makes Tornado set the cookie on the page's response; the
beacon then carries it and the shutdown is accepted. XSRF checks stay on for every other request.
"""

from __future__ import annotations

from typing import Any


def prelaunch(handler: Any, notebook: Any = None, cwd: str | None = None) -> None:
    """Before the page's kernel starts: the ``_xsrf`` cookie on this response (Tornado sets it when the
    token is first read). Returns None: the notebook is used as it is."""
    handler.xsrf_token  # noqa: B018  (read for its effect: the cookie)
