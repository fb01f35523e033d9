"""The bridge's Pub/Sub clients: a subscriber that takes large responses, a bulk publisher.

**Subscriber.** On the emulator the client library opens its channel with gRPC's default
4 MiB limit on received messages, and the emulator packs every available message into one
streaming-pull response whatever the flow control: eight batch records of 500 images
(~530 KB each) make a response the client refuses, and nothing is ever delivered (seen
here: 7 such records arrive, 8 never do). :func:`subscriber_client` gives the emulator an
unlimited channel, as the library already does for real Pub/Sub.

**Publisher.**
The library's ``publish`` costs ~60 us of CPU per message (a future, a protobuf and a lock
each): 20,000 predictions-sized messages went to the emulator here at 8,400/s (61.6 us CPU
each); a batch of predictions is known in full, so :meth:`BulkPublisher.publish_many` sends
it with the generated client's ``Publish`` call, 1,000 messages per request (Pub/Sub's
limit): the same 20,000 at 29,000/s (14.3 us CPU each). Dead letters, rare, keep the
library's path.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from typing import Any

from fmnist_faust.config import PubSubSettings


def subscriber_client(pubsub: PubSubSettings) -> Any:
    """A ``pubsub_v1.SubscriberClient``; on the emulator, over a channel without a size limit."""
    from google.cloud import pubsub_v1

    emulator_host = pubsub.emulator_host
    if not emulator_host:
        return pubsub_v1.SubscriberClient(**pubsub.client_kwargs())
    import grpc  # type: ignore[import-untyped]
    from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

    unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    channel = grpc.insecure_channel(emulator_host, options=unlimited)
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


MESSAGES_PER_REQUEST = 1000  # Pub/Sub's limit per Publish request
BYTES_PER_REQUEST = 9 * 1024 * 1024  # under its 10 MB request limit


class BulkPublisher:
    """Wraps a ``pubsub_v1.PublisherClient``; ``publish`` is the library's own."""

    def __init__(self, client: Any, threads: int = 4, timeout_s: float = 60.0) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="bridge-publish")

    def topic_path(self, project: str, topic: str) -> str:
        return str(self.client.topic_path(project, topic))

    def publish(self, topic: str, data: bytes, **attrs: str) -> concurrent.futures.Future:
        return self.client.publish(topic, data, **attrs)

    def publish_many(
        self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[concurrent.futures.Future]:
        """Publish ``(data, attributes)`` messages in requests of up to 1,000; one future per
        request, done when Pub/Sub confirmed the whole request (or with its error)."""
        futures = []
        start, size = 0, 0
        for end, (data, _) in enumerate(messages):
            if end > start and (end - start >= MESSAGES_PER_REQUEST or size + len(data) > BYTES_PER_REQUEST):
                futures.append(self._pool.submit(self._publish_request, topic, messages[start:end]))
                start, size = end, 0
            size += len(data) + 100  # attributes and framing, roughly
        if start < len(messages):
            futures.append(self._pool.submit(self._publish_request, topic, messages[start:]))
        return futures

    def _publish_request(self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
        from google.pubsub_v1.types import PubsubMessage

        batch = [PubsubMessage(data=data, attributes=attributes) for data, attributes in messages]
        self.client.api.publish(topic=topic, messages=batch, timeout=self.timeout_s)

    def stop(self) -> None:
        """Wait for the requests in flight, then flush and stop the library's publisher."""
        self._pool.shutdown(wait=True)
        self.client.stop()
