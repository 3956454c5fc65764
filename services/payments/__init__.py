"""The payments service: currency purchases through the card processor, the order lifecycle,
spending caps, velocity limits and the processor circuit breaker."""
