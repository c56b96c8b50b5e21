"""The GraphQL server: Tornado + graphql-core over ``toolkit.service.InferenceService``.

No torch here: the server only talks to the service. ``python -m server`` runs it.
"""
