"""HTTP front doors: thin adapters that parse requests and call the engine."""
