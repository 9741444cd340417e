"""A real Apache Kafka for streamserve: jars from Maven Central, a local KRaft broker, topics.

``LocalKafka`` runs a single-node broker as a child process; ``admin`` holds topic helpers
that work against any bootstrap address; ``jars.ensure_jars`` fetches the broker once.
"""

from streamserve.kafka.broker import LocalKafka
from streamserve.kafka.jars import KAFKA_VERSION, ensure_jars

__all__ = ["KAFKA_VERSION", "LocalKafka", "ensure_jars"]
