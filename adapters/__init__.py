"""Transports for asyncjobs, imported as ``asyncjobs.adapters``.

They depend on the core; the core never imports them.
"""
