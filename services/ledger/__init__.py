"""The ledger service. Its API arrives with its own issue; for now it serves health and reflection."""
