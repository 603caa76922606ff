"""The stream side of customer-ai: Kafka and Redis around the pure core in :mod:`models`.

Grouped by role:

- :mod:`stream.worker`: the running worker (Faust app, scorer, trainer, Redis store,
  producer, batching, lanes, collector, settings, security, the dependency door
  :mod:`stream.worker.compat`);
- :mod:`stream.ops`: what operators read (metrics, lag, HTTP views, segment queries);
- :mod:`stream.cli`: the ``customer-ai`` commands and their rendering;
- :mod:`stream.devservers`: the embedded Tansu broker and Valkey for development and tests;
- :mod:`stream.redaction`: passwords masked in what is printed or logged.
"""
