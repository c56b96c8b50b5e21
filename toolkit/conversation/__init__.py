"""Conversations that last: kept in the store as they go, continued from any front end, searchable.

    conv = service.conversation(system_prompt="Answer briefly.", temperature=0)
    conv.ask("Who designed the Harlow Dam?").text
    conv.ask("When was it finished?").text       # the store supplies the turns before it
    conv.id                                        # GraphQL's conversationId, /v1's conversation_id
    Conversation.load(conv.id, service)            # any process, any front end
    service.conversations(query="Harlow")          # newest first, found by words of prompts and answers

The service keeps a conversation when a request names one (``conversation=<id>``) or asks for a new one
(``conversation=True``): it reads the turns before from the store, runs the request, and saves the turn
before the answer reaches the caller, or, when the caller goes away first, saves what was said so far as
``cancelled``. Cancelled and failed turns stay in the conversation's record but are not sent to the model
as history (their answers are not whole). Without a store (``TOOLKIT_STORE=off``) a ``Conversation`` keeps
its turns in memory and sends them as history itself.

The rooms: ``records`` (what a kept conversation is), ``store`` (``ConversationStore``: them in SQLite),
``thread`` (the service's side: a request's part in one, saved however it ends), ``handle`` (the user's
``Conversation`` and ``conversations()``), ``export`` (Markdown and a notebook that rebuilds one).
"""
