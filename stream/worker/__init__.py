"""The running worker: Faust app, scorer, trainer, store, producer and their plumbing."""
