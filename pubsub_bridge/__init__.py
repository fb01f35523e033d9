"""The Pub/Sub bridge: the Faust agent's classify-and-score step on Google Pub/Sub.

A thin adapter over :mod:`fmnist_faust.core`: streaming pull on the images subscription,
one :func:`~fmnist_faust.core.pipeline.classify_batch` call per batch, predictions and
dead letters published back to Pub/Sub, running accuracy kept exactly once in a state store
(SQLite, or PostgreSQL shared by a fleet: ``BRIDGE_STATE_URL``), and the worker's JSON views
served on ``BRIDGE_WEB_PORT``.

    python -m pubsub_bridge setup   # topics and subscriptions, idempotent
    python -m pubsub_bridge run     # the bridge
    python -m pubsub_bridge watch   # running accuracy from the predictions subscription

The same code runs on Google Cloud (Application Default Credentials) and on the emulator
(``PUBSUB_EMULATOR_HOST``). One emulator behaviour to know: after a client's streaming
pull ends (even cleanly), the emulator keeps handing that dead stream a share of the
messages for tens of seconds; they come back when their lease (``PUBSUB_ACK_DEADLINE_SECONDS``)
expires, each trip counting as a delivery attempt. Totals stay exact (nothing is counted
that was not handled), but a restart on the emulator can take a minute to catch up.
"""
