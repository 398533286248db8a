"""The upload engine: sizes, offsets, leases and completion, over the state store and the staging area."""
