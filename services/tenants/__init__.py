"""The tenants service: tenants, their settings, SDK keys (hashed) and webhook signing secrets."""
