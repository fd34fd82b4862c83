"""The review web page: a producer's team reviews media and records decisions in a browser."""
