"""`nnx serve`: a page to draw digits on, and a JSON API around one loaded model (extra `web`)."""
