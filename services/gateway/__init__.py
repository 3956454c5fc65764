"""The gateway: the public HTTP API, SDK-key auth, the error envelope, rate limits, the admin API."""
