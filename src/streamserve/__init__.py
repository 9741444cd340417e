"""streamserve: ML model inference on Apache Kafka streams, embedded or remote."""

__version__ = "0.1.0"
