"""The host system: network addresses, TLS material, and other OS-level pieces."""
