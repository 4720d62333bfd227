"""Transports for asyncjobs (imported as ``asyncjobs.adapters``); they depend on the core, never the reverse."""
