"""Development only: the local network (`make run`, `make up`, the tests' stack), its embedded
PostgreSQL and NATS, its development secrets, and the simulators of the outside providers (the card
processor, the ACH bank). None of it ships in the image: the runtime package is `services`.
"""
