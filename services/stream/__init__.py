"""ATAS stream service: live execution updates over Server-Sent Events."""
