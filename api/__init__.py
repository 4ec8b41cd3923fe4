"""``hcp api``: the HTTP front door (SPEC section 6). See docs/api.md."""
