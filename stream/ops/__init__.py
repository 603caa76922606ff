"""What operators read: Prometheus metrics, consumer lag, HTTP views, segment queries."""
