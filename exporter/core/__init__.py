"""The lowest layer: errors, the model and metrics contract, snapshot, scheduler, secrets, command running, logging."""
