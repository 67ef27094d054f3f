"""Services: what routes call. They raise typed errors (ferry.errors) and return plain data."""
