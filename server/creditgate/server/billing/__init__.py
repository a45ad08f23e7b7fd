"""Billing time: credit periods and their grants."""
