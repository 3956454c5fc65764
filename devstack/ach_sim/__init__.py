"""The ACH provider simulator (Modern Treasury), for development and tests: see app.py."""
