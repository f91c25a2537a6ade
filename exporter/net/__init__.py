"""Network primitives: connecting, TLS contexts, certificate inspection, the connect guard."""
