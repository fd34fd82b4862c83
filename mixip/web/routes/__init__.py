"""The review page's routes, one module per area of the page."""
