"""The v1 routes, one module per group of SPEC section 6."""
