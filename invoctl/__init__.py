"""invoctl: the operators' command line over the admin API (`python -m invoctl --help`).

Every admin route the gateway declares is a command, built from the same declarations that
validate its requests and generate `/openapi.json` (services/gateway/declare.py): a new admin route
is a new command without a line here, and `tests/test_invoctl.py` checks that every one is reachable.
"""
