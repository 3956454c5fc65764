"""`make faults`: a Jepsen-style bank workload run from outside the network, one fault per phase.

Partners' clients (`faults.client`) drive every money flow the network has (`faults.flows`)
through the public gateway, retrying each request with the same idempotency key until it gets a
definite answer; a webhook receiver per tenant (`faults.receivers`) verifies every signature. Each
phase (`faults.phases`) injects one fault while the load runs: a process SIGKILLed, PostgreSQL
frozen, connections cut through a TCP proxy (`faults.proxy`). After each phase the invariants are
checked (`faults.checks`) against what the clients were told (`faults.model`); `faults.runner`
runs the phases and `faults.report` prints and writes the result. `python -m faults` is the
command line; `tests/test_faults.py` runs a short version on the test session's network.
"""
