"""Self-contained remote code copied into every built model: imports only torch and transformers."""
