"""Gateway: the client-facing API. Authentication, encrypted media storage and orchestration of
the four services; no matching or consent logic of its own."""
