"""A worker of the end-to-end bench: ``affectstream worker`` as deployed, whose metrics (the registry its
``/metrics`` renders) the bench reads on a port of its own.

    python -m affectstream.bench.e2e_worker PORT worker --role classify ...   # then the worker's own arguments

A processing worker serves ``/metrics`` only with its web server, and that adds the dashboard's hub, which
reads every result back from Redis in the worker's own event loop: load the bench would measure. Here only
the metrics registry is served, from prometheus_client's own server thread, idle until the bench reads it
at the start and end of each phase (``e2e_observe.WorkerMetrics``).
"""
from __future__ import annotations

import runpy
import sys


def main() -> None:
    port = int(sys.argv[1])
    from prometheus_client import start_http_server

    from affectstream.streaming.worker import metrics  # imports no torch: the CLI still sets what precedes it

    start_http_server(port, addr="127.0.0.1", registry=metrics.REGISTRY)
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    runpy.run_module("affectstream.cli", run_name="__main__", alter_sys=True)  # `python -m affectstream.cli`


if __name__ == "__main__":
    main()
