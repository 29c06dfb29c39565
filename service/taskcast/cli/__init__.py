"""The ``taskcast`` command: dev, serve, worker, and the terminal clients."""
