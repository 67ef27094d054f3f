"""Request and response models of each API, below the services that consume them."""
