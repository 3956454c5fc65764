"""The payouts service: partner payouts by ACH (issue 15)."""
