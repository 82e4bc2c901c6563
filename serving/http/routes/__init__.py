"""HTTP routes, one module per route group; each reads its collaborators from `ServingContext`."""
