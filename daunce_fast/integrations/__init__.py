"""Adapters that let other training-data-attribution tools use daunce_fast."""
