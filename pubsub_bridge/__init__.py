"""The Pub/Sub bridge: the Faust agent's classify-and-score step on Google Pub/Sub.

A thin adapter over :mod:`fmnist_faust.core`: streaming pull on the images subscription,
one :func:`~fmnist_faust.core.pipeline.classify_batch` call per batch, predictions and
dead letters published back to Pub/Sub, running accuracy kept exactly once in a local
SQLite store, and the worker's JSON views served on ``BRIDGE_WEB_PORT``.

    python -m pubsub_bridge setup   # topics and subscriptions, idempotent
    python -m pubsub_bridge run     # the bridge
    python -m pubsub_bridge watch   # running accuracy from the predictions subscription
"""
