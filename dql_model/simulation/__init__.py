"""The synthetic shop: the hidden shopper model that writes the demo's logs and serves as an environment."""
