"""Test infrastructure that users can reuse: a fault-injecting Kafka proxy (hostile double of a Kafka broker).

Module map (arrows point down)::

    kafka_proxy.py       KafkaProxy: listeners, the scripting API, address rewriting, the request log
       │
       ▼
    kafka_connection.py  one client connection and its broker connection, answers in request order
       │
       ▼
    kafka_faults.py      fault rules (Match + TopLevelError | PartitionErrors | Delay | Disconnect), the plan
       │                 for one request, the commit metadata the proxy can keep
       ▼
    kafka_wire.py        frames, request headers, aiokafka's protocol classes by (api_key, version), body
                         edits, the error hierarchy
"""

from pipeline.testing.kafka_faults import (
    Delay,
    Disconnect,
    ErrorCode,
    Fault,
    Match,
    PartitionErrors,
    Rule,
    TopLevelError,
)
from pipeline.testing.kafka_proxy import KafkaProxy, SeenRequest
from pipeline.testing.kafka_wire import ApiKey, KafkaProxyError, ProtocolError, UnsupportedFault

__all__ = [
    "ApiKey",
    "Delay",
    "Disconnect",
    "ErrorCode",
    "Fault",
    "KafkaProxy",
    "KafkaProxyError",
    "Match",
    "PartitionErrors",
    "ProtocolError",
    "Rule",
    "SeenRequest",
    "TopLevelError",
    "UnsupportedFault",
]
