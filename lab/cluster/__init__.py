"""A two-node Kubernetes cluster built here, in private namespaces (``python -m lab.cluster --help``).

Modules: ``topology`` (addresses, nodes, the state directory, small helpers), ``files`` (certificates and
configuration written before start), ``init`` (the PID 1s inside the namespaces), ``cluster`` (up, down and the
helpers the e2e suite and the benchmarks call), ``images`` (the node images), ``__main__`` (the command line).
"""
