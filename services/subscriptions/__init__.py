"""Currency subscriptions: a plan the player pays for every period from the wallet (issue 19)."""
