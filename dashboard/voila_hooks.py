"""What Voila calls back into the dashboard (``VoilaConfiguration.prelaunch_hook``, set by ``voila.py`` in the
configuration folder ``dashboard.__main__`` writes).

Voila's page shuts its kernel down when it unloads (a reload, a closed tab) with a beacon that sends the
``_xsrf`` cookie back as a form field; Voila never sets that cookie, so every reload logged a 403 for the
old kernel's shutdown in the browser's console and left the kernel to the idle culler (voila-dashboards/voila
issue 1458). Reading the handler's XSRF token makes Tornado set the cookie on the page's response; the
beacon then carries it and the shutdown is accepted. XSRF checks stay on for every other request.

The page is refused (403) when its ``Host`` is not a name the dashboard answers to, by the server's rule
(``server.security.AllowedHosts``: IP addresses, localhost, names without a dot, the bound name and
ALLOWED_HOSTS): the guard against DNS rebinding. Voila turns jupyter_server's own Host check off
(``allow_remote_access=True`` in its Tornado settings), so this hook is the check; it runs before the
kernel starts, and the kernel's endpoints need the kernel id only the page gives.
"""

from __future__ import annotations

from typing import Any


def prelaunch(handler: Any, notebook: Any = None, cwd: str | None = None) -> None:
    """Before the page's kernel starts: refuse a ``Host`` the dashboard does not answer to; then the ``_xsrf``
    cookie on this response (Tornado sets it when the token is first read). Returns None: the notebook is
    used as it is."""
    check_host(handler)
    handler.xsrf_token  # noqa: B018  (read for its effect: the cookie)


def check_host(handler: Any) -> None:
    """403 (``tornado.web.HTTPError``) for a request whose ``Host`` is not a name the dashboard answers to."""
    import tornado.web

    from dashboard.config import allowed_hosts
    from server.security import AllowedHosts

    voila = handler.settings.get("voila")  # Voila puts itself in its Tornado settings
    hosts = AllowedHosts(allowed_hosts(), bound=getattr(voila, "ip", None))
    header = handler.request.headers.get("Host")
    if not hosts.allows(header):
        reason = "the page was asked for by a name this dashboard does not answer to: add it to ALLOWED_HOSTS"
        raise tornado.web.HTTPError(403, "%s", AllowedHosts.refusal(header or ""), reason=reason)
