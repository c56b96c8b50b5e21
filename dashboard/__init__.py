"""The Voila chat dashboard: ``ChatApp`` over any service with the ``InferenceService`` interface.

No torch here: the dashboard talks to the GraphQL server through ``RemoteService``
(or, with ``DASHBOARD_BACKEND=inprocess``, to a service in the kernel).
"""
