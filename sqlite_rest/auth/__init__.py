"""Who may do what: JWT authentication (``authenticator.py``) and the access signals the
metrics count."""
