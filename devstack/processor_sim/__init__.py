"""A card-processor simulator speaking Stripe's REST subset (development and tests only)."""
