"""Mails as clients, gateways and mail servers really shape them (see build.py and README.md)."""
