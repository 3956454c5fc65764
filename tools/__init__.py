"""The project's tools (installing, the README's settings table, the Kubernetes check)."""
