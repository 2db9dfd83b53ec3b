"""HTTP routes, one module per resource. Routes parse, authorize, call the domain, shape."""
