"""The transfers service: self-transfers and sends between tenants (issue 14)."""
