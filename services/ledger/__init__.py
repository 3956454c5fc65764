"""The ledger service: double-entry accounts, transactions, holds, balances. See README.md."""
