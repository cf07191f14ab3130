"""Monitoring: batch predictions, realized error over time, decay and what it triggers."""
